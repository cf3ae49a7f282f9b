#!/usr/bin/env bash
# End-to-end tests of the web console (docs/ui.md): Playwright drives Debian's chromium-headless-shell
# (no browser download) against a real `agentbox serve` that ui/playwright.config.js starts on a
# loopback port. Screenshots, perf.json and traces of failures land in ui/test-results (keep it as a CI
# artifact). Needs node and npm; installs chromium-headless-shell when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium-headless-shell >/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "ui-test: chromium-headless-shell is not installed (apt-get install -y chromium-headless-shell)" >&2
    exit 1
  fi
  apt-get install -y chromium-headless-shell >/dev/null
fi
# The vendored libraries must be the lockfile's (this also runs npm ci).
scripts/ui-vendor.sh --check
go build -trimpath -o bin/agentbox ./cmd/agentbox
cd ui
rm -rf test-results
# The server's keys, heavy state root and snapshots live in a directory of this run's own, removed
# after it. Playwright stops the server with SIGTERM (playwright.config.js), so the server takes its
# sandboxes down itself; one that could not leaves runsc's netns file mounted in its root.
state=$(mktemp -d "${TMPDIR:-/tmp}/agentbox-ui-XXXXXX")
cleanup() {
  findmnt -rn -o TARGET | grep -F "$state/" | sort -r | xargs -r -n1 umount -l || true
  rm -rf "$state"
}
trap cleanup EXIT
AGENTBOX_UI_STATE=$state npx playwright test "$@"
