#!/usr/bin/env bash
# Pack what `scripts/services.sh up kafka` needs into two tarballs, for a machine that has
# neither Java nor network (the lent GPU machine): a jlink'ed Java runtime (with javac, which
# services.sh uses for its readiness probe) and the Kafka jars this repo resolves from Maven
# Central. Each stays under 64 MiB, so each can be one carry.
#
#   scripts/bundle-kafka.sh OUT_DIR   # needs a JDK 21+ (jlink --compress=zip-9) here, named by
#                                     # JLINK_JDK or on PATH, and `services.sh up kafka` run once
#
# There:  tar -C /root -xJf jre.tar.xz && mkdir -p ~/.cache/moderator && tar -C ~/.cache/moderator -xf kafka.tar
#         PATH=/root/jre/bin:$PATH scripts/services.sh up kafka
set -euo pipefail
out=${1:?usage: scripts/bundle-kafka.sh OUT_DIR}
jdk_bin=${JLINK_JDK:+$JLINK_JDK/bin/}
cache=${MODERATOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/moderator}
version=${KAFKA_VERSION:-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' \
  "$(dirname "$0")/kafka/pom.xml")}
[[ -f $cache/kafka-$version/libs/.complete ]] ||
  { echo "no Kafka $version jars in $cache: run scripts/services.sh up kafka once" >&2; exit 1; }
# The modules Kafka's jars use (jdeps --print-module-deps over libs/*), javac for the probe,
# jdk.management for the JVM's own metrics.
modules=java.base,java.compiler,java.desktop,java.logging,java.management,java.naming,java.rmi
modules+=,java.scripting,java.security.jgss,java.security.sasl,java.sql,jdk.unsupported
modules+=,jdk.compiler,jdk.management,jdk.zipfs,jdk.crypto.cryptoki
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"${jdk_bin}jlink" --add-modules "$modules" --strip-debug --no-man-pages --no-header-files \
  --compress=zip-9 --output "$work/jre"
mkdir -p "$out"
tar -C "$work" -cJf "$out/jre.tar.xz" jre
tar -C "$cache" --exclude mvn.log -cf "$out/kafka.tar" "kafka-$version"
ls -l "$out"
