#!/usr/bin/env bash
# The system packages the tests need beside the virtualenv (`make test` runs this first).
# As root with apt-get: installs what is missing (one `apt-get update` at most). Otherwise: names
# what is missing and the command that installs it, and the tests that will skip without it.
set -uo pipefail
export DEBIAN_FRONTEND=noninteractive
# package | check | the tests that need it
NEEDED=(
  "prometheus|command -v promtool|the Prometheus and monitoring-manifest tests"
  "libb64-0d|dpkg -s libb64-0d|the perf_analyzer tests (perf_analyzer links libb64.so.0d)"
  "chromium|command -v chromium|the report page test (renders index.html in headless Chromium)"
)
missing=()
for row in "${NEEDED[@]}"; do
  IFS='|' read -r pkg check why <<<"$row"
  eval "$check" >/dev/null 2>&1 || missing+=("$pkg|$why")
done
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  pkgs=(); for row in "${missing[@]}"; do pkgs+=("${row%%|*}"); done
  echo "make test: installing system packages: ${pkgs[*]}"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  still=()
  for row in "${NEEDED[@]}"; do
    IFS='|' read -r pkg check why <<<"$row"
    eval "$check" >/dev/null 2>&1 || still+=("$pkg|$why")
  done
  missing=("${still[@]+"${still[@]}"}")
fi
for row in "${missing[@]+"${missing[@]}"}"; do
  echo "make test: missing system package ${row%%|*}: ${row#*|} will be skipped;" \
       "install it with: sudo apt-get install -y --no-install-recommends ${row%%|*}" >&2
done
command -v kubectl >/dev/null 2>&1 \
  || echo "make test: kubectl missing: the Kubernetes manifest tests will be skipped (install kubectl >= 1.27)" >&2
# The tests start Prometheus themselves: do not leave Debian's service running on its port.
(service prometheus stop >/dev/null 2>&1 || pkill -x prometheus || true) 2>/dev/null
exit 0
