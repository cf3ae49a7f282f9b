#!/usr/bin/env bash
# The project's checks and tests, as CI runs them: formatting, vet, staticcheck, module tidiness, the
# Go test suite (and the race detector over the concurrent parts), the fuzz targets' seed corpora, and a
# short fuzzing pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GOTOOLCHAIN=go1.27.3 # as setup.sh: the pinned toolchain
# The heavy-tier integration tests (root, runsc, the root filesystem) run here; setup installed them.
export AGENTBOX_INTEGRATION=1

say() { printf '[test %4ds] %s\n' "$SECONDS" "$*" >&2; }

say "no build outputs or large files tracked"
# Test binaries, bin/ and the embedded interpreter are built, never committed; nothing tracked may pass 4 MiB.
bad=$(git ls-files | grep -E '(\.test$|\.wasm$|\.prof$|^bin/|^internal/pywasm/assets/)' || true)
big=$(git ls-files -z | xargs -0 -r stat -c '%s %n' 2>/dev/null | awk '$1 > 4194304 {print $2}')
[ -z "$bad$big" ] || { echo "tracked build outputs or files over 4 MiB: $bad $big"; exit 1; }

say "gofmt"
# shellcheck disable=SC2046 # one argument per file is meant
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
[ -z "$unformatted" ] || { echo "not gofmt-clean: $unformatted"; exit 1; }

say "go vet"
# wazero's experimental sys.File interface requires Seek(int64, int) (int64, sys.Errno), which vet's
# stdmethods check (written for io.Seeker) flags in internal/vfs and, through it, in every package
# that imports it; that one check is off, every other analyzer runs.
go vet -stdmethods=false ./...

say "staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

say "go mod tidy leaves no diff"
cp go.mod /tmp/agentbox-go.mod.bak && cp go.sum /tmp/agentbox-go.sum.bak
go mod tidy
if ! cmp -s go.mod /tmp/agentbox-go.mod.bak || ! cmp -s go.sum /tmp/agentbox-go.sum.bak; then
  cp /tmp/agentbox-go.mod.bak go.mod && cp /tmp/agentbox-go.sum.bak go.sum
  echo "go mod tidy changes go.mod/go.sum"; exit 1
fi

say "govulncheck (offline database; fails on a reachable vulnerability)"
bash scripts/vulncheck.sh

say "Debian packages for the Python SDK's tests, coverage and lint, shellcheck, and runc"
# Debian's interpreter, pytest, coverage, flake8 and mypy; the SDK is installed offline into
# throw-away venvs. runc runs the server's container image the way `docker run --privileged` does
# (build/image's integration test; the image's heavy tier cannot run under runsc itself).
py_pkgs="python3-pytest python3-setuptools python3-venv python3-pip python3-coverage python3-flake8 mypy shellcheck runc"
missing=""
for p in $py_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086 # a list of package names
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null
fi

say "go test with coverage (integration included), and the Python SDK's pytest against a real server with coverage"
bash scripts/coverage.sh

say "go test -race (the packages that share sessions between goroutines)"
go test -race -count=1 ./internal/dispatch ./internal/server ./internal/mcpserver ./internal/vfs ./local ./internal/limits
go test -race -count=1 -run 'TestSessionInfoSafeUnderRefresh|TestClientKeysAreTenants' .
go test -race -count=1 ./internal/cli
# Nano concurrency: sandboxes sharing the standard-library layer, sleepers giving up slots, session caps.
# The 1,000-run leak tests run in the plain job above: the race detector's shadow memory grows RSS.
go test -race -count=1 -skip 'TestSleepTimeoutsLeakNothing|TestRunawayTimeoutsLeakNothing' ./internal/nano ./internal/vfs ./internal/router
go test -race -count=1 ./internal/heavy
go test -race -count=1 -timeout 30m -run 'TestSession|TestMCPAuto|TestGuestCannotReachProtocol|TestReadFileIsCapped|TestShutdownStopsHeavyCellAtGrace|TestCloseKillsLiveSandboxes|TestKill9RestartSweeps|TestNetworkedSandbox|TestEscapePolicyChange|TestNetworkSweptAfterKill9|TestCommand|TestStepSnapshotAndRestore|TestSnapshotFaults|TestRestoreInAnotherEngine|TestNetworkedStepRestore' ./internal/heavy/integration
# Time travel's store and step log, the E2B surface, the web console's shell and stream relays, and
# the fleet's placement, pinning, drain and failure handling against a real 3-node NATS cluster.
go test -race -count=1 ./internal/snapstore ./internal/e2b ./internal/console
go test -race -count=1 -run 'TestFleetFull|TestFleetDrain|TestFleetSessionPinned|TestFleetKilled|TestFleetAudit|TestFleetMCP|TestFleetSessionRecord|TestFleetSlowHostKeepsItsSessions|TestFleetKilledHostIsGone' ./internal/cluster
# The governed network: the data plane, the namespaces, the policy's Guard, the DLP engine's shared
# state, and the hosted MCP servers' relay.
go test -race -count=1 ./internal/egress ./internal/netns ./internal/mcphost ./internal/audit
go test -race -count=1 -run 'Guard|Network|Session' ./internal/netpolicy
go test -race -count=1 -run 'TestScanIsSafeForConcurrentUse|TestScanRequest|TestScanResponse' ./internal/dlp

say "web console end to end (Playwright driving Debian's chromium-headless-shell against a real server)"
# Installs chromium-headless-shell (apt) and the pinned @playwright/test (npm ci) if missing; with
# AGENTBOX_INTEGRATION=1 it includes the heavy session's chart and bash shell. Screenshots, timings and
# traces of failures stay in ui/test-results/ (CI's artifact).
bash scripts/ui-test.sh

say "lint: shellcheck, flake8 and mypy for the Python SDK"
shellcheck -S warning scripts/*.sh
shellcheck -S error build/*/*.sh # the interpreter's and rootfs's build scripts key their caches on their bytes
/usr/bin/python3 -m flake8 --max-line-length 140 sdk/python
(cd sdk/python && /usr/bin/python3 -m mypy --check-untyped-defs --warn-unused-ignores --no-incremental --cache-dir /dev/null agentbox)

say "release bundle: every platform, wheels, SBOM, checksums and signature, arm64 under qemu, the wheel in a clean venv"
bash scripts/release-check.sh

say "nano's masked memory accesses on arm64 (wazero's other compiler back end), under qemu"
# release-check.sh installed qemu-user-static. The tests build their own small modules: CPython
# itself is not run (compiling it under emulation takes minutes).
CGO_ENABLED=0 GOARCH=arm64 go test -c -o "${TMPDIR:-/tmp}/agentbox-nano-arm64.test" ./internal/nano
(cd internal/nano && qemu-aarch64-static "${TMPDIR:-/tmp}/agentbox-nano-arm64.test" -test.run 'TestMasked|TestSetMemoryMask|FuzzMasked')
rm -f "${TMPDIR:-/tmp}/agentbox-nano-arm64.test"

say "benchmarks against the committed baseline (fails only on > 1.5x)"
go run ./build/release/benchgate -bin bin/agentbox -baseline build/release/bench-baseline.json

say "fuzzing (short)"
# Budgets are counts of executions (about 10 s each on this machine), not durations: a duration races
# Go's fuzzing coordinator at its deadline and fails with a bare "context deadline exceeded" under
# load (golang/go#51484), without any failing input.
go test -run '^$' -fuzz '^FuzzOps$' -fuzztime 150000x ./internal/vfs
go test -run '^$' -fuzz '^FuzzOffsets$' -fuzztime 150000x ./internal/vfs
go test -run '^$' -fuzz '^FuzzStripDataSegments$' -fuzztime 25000x ./internal/nano
go test -run '^$' -fuzz '^FuzzAPI$' -fuzztime 10000x ./internal/server
go test -run '^$' -fuzz '^FuzzImports$' -fuzztime 400000x ./internal/router
go test -run '^$' -fuzz '^FuzzParseBridgeRequest$' -fuzztime 100000x ./internal/nano
go test -run '^$' -fuzz '^FuzzMaskedStoreLandsInRegion$' -fuzztime 20000x ./internal/nano
go test -run '^$' -fuzz '^FuzzPeekHello$' -fuzztime 100000x ./internal/egress
go test -run '^$' -fuzz '^FuzzAnswerDNS$' -fuzztime 120000x ./internal/egress
go test -run '^$' -fuzz '^FuzzCanonical$' -fuzztime 80000x ./internal/netpolicy
go test -run '^$' -fuzz '^FuzzDecide$' -fuzztime 120000x ./internal/netpolicy
go test -run '^$' -fuzz '^FuzzScanRedact$' -fuzztime 70000x ./internal/dlp
go test -run '^$' -fuzz '^FuzzScanRequestBody$' -fuzztime 30000x ./internal/dlp
go test -run '^$' -fuzz '^FuzzSearchQuery$' -fuzztime 40000x ./internal/audit
go test -run '^$' -fuzz '^FuzzResolveRef$' -fuzztime 40000x ./internal/apidoc
go test -run '^$' -fuzz '^FuzzEscapeID$' -fuzztime 20000x ./internal/apidoc
