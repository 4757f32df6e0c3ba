# shellcheck shell=bash
# Shared by scripts/services.sh and scripts/lint-deploy.sh (sourced; the caller defines `die`).

as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "need root to run: $* (run as root, or install the package yourself)"
  fi
}

# apt_install_quietly PACKAGE: install a Debian package without starting its service.
# Packages such as redis-server and prometheus start a system-wide daemon from their postinst
# through invoke-rc.d wherever no policy forbids it; that daemon would then squat on a port our
# scripts use. A policy-rc.d answering 101 forbids it, and is removed again if we added it.
apt_install_quietly() {
  local package=$1 policy=/usr/sbin/policy-rc.d added_policy=0 rc=0
  if [[ ! -e $policy ]]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    added_policy=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || rc=$?
  if ((rc == 0)); then
    as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "$package" >/dev/null || rc=$?
  fi
  ((added_policy)) && as_root rm -f "$policy"
  ((rc == 0)) || die "apt-get install $package failed (exit $rc)"
}
