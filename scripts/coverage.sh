#!/usr/bin/env bash
# Coverage of the Go packages (unit and integration tests, so root, runsc and AGENTBOX_INTEGRATION=1
# as test.sh sets them) and of the Python SDK (Debian's python3-coverage over its pytest suite),
# printed per package, failing below the floors. The floors were set from the figures measured on
# main on 2026-12-01 with every package of that day (Go 82.7% of statements in all, the Python SDK
# 95%), a few points lower for run-to-run noise (timing-dependent branches); raise them as coverage
# rises.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=go1.27.3
GO_FLOOR=${GO_FLOOR:-80}
PY_FLOOR=${PY_FLOOR:-90}

say() { printf '[coverage] %s\n' "$*" >&2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

say "Go: go test -coverprofile, statements of every package counted by the tests of any package"
# -coverpkg over our own packages: the integration packages test internal/heavy and the server, and
# their coverage belongs to those packages. The fuzz seed corpora run too (they are tests).
pkgs=$(go list ./... | grep -v '/build/release/' | paste -sd, -)
# The figures are printed even when a test failed (the profile still has every package's counts);
# the failure is reported after them.
tests=0
go test -count=1 -timeout 45m -covermode=atomic -coverpkg="$pkgs" -coverprofile="$out/go.cov" ./... >"$out/go.log" 2>&1 || tests=$?
[ -z "${COVERAGE_OUT:-}" ] || cp "$out/go.cov" "$COVERAGE_OUT"
# The slowest test binaries first: where CI's time goes.
grep -E '^(ok|FAIL)[[:space:]]' "$out/go.log" | sort -t$'\t' -k3 -g -r | head -12 >&2 || true
# Per package: statements covered / statements, from the profile (a statement block counted once even
# when several test binaries ran it).
awk -F'[: ,]' 'NR > 1 {
    key = $1 ":" $2 ":" $3; n[key] = $4; if ($5 > 0) hit[key] = 1
  } END {
    for (k in n) { split(k, part, ":"); pkg = part[1]; sub(/\/[^\/]*$/, "", pkg); tot[pkg] += n[k]; all += n[k]
      if (k in hit) { cov[pkg] += n[k]; done += n[k] } }
    for (pkg in tot) printf "%6.1f%%  %s\n", 100 * cov[pkg] / tot[pkg], pkg
    printf "%6.1f%%  TOTAL\n", 100 * done / all
  }' "$out/go.cov" | sort -k2 | tee "$out/go.txt"
if [ "$tests" != 0 ]; then
  grep -E -- '^(--- FAIL|FAIL|panic:)|^ +[a-z_]+_test\.go:[0-9]+:|^ {8}' "$out/go.log" | cut -c1-300
  echo "go test failed"; exit 1
fi
total=$(awk '$2 == "TOTAL" {sub(/%/, "", $1); print $1}' "$out/go.txt")
awk -v t="$total" -v f="$GO_FLOOR" 'BEGIN { exit !(t + 0 >= f + 0) }' ||
  { echo "Go coverage $total% is below the floor of $GO_FLOOR%"; exit 1; }

say "Python SDK: coverage of pytest against a real server"
venv="$out/venv"
/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install -q --no-build-isolation --no-index ./sdk/python
site=$("$venv/bin/python" -c 'import agentbox, os; print(os.path.dirname(agentbox.__file__))')
AGENTBOX_BIN="$PWD/bin/agentbox" "$venv/bin/python" -m coverage run --data-file="$out/py.cov" --source="$site" \
  -m pytest -q -p no:cacheprovider sdk/python/tests >"$out/py.log" 2>&1 || { cat "$out/py.log"; exit 1; }
"$venv/bin/python" -m coverage report --data-file="$out/py.cov" --fail-under="$PY_FLOOR"
