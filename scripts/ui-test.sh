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
exec npx playwright test "$@"
