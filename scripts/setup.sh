#!/usr/bin/env bash
# Everything agentbox needs on a fresh Debian 12 machine with Go: Debian packages, the python.wasm
# interpreter (built from Debian's sources), gVisor's runsc and the heavy tier's root filesystem (all
# cached), and bin/agentbox. Safe to run again: cached steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*" >&2; }

command -v go >/dev/null || { say "Go 1.26.8 or newer is required (https://go.dev/doc/install)"; exit 1; }
if [ "$(id -u)" != 0 ] && ! command -v clang-16 >/dev/null; then
  say "the first run installs Debian packages: run it as root (or with sudo)"
  exit 1
fi

bash build/pywasm/build.sh
bash build/heavy/build.sh
say "building bin/agentbox"
go build -trimpath -o bin/agentbox ./cmd/agentbox
say "ready: bin/agentbox"
