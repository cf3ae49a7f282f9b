#!/usr/bin/env bash
# Everything agentbox needs on a fresh Debian 12 machine with Go: Debian packages, the python.wasm
# interpreter (built from Debian's sources), gVisor's runsc and the heavy tier's root filesystem (all
# cached), and bin/agentbox. Safe to run again: cached steps are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*" >&2; }

# The toolchain is pinned (go.mod's toolchain line says the same): the Go module proxy serves it, and a
# machine whose `go env GOTOOLCHAIN` is local would otherwise build with whatever Go it has, with the
# standard library's fixed vulnerabilities unfixed (scripts/vulncheck.sh).
export GOTOOLCHAIN=go1.27.3

command -v go >/dev/null || { say "Go 1.26.8 or newer is required to fetch the pinned go1.27.3 (https://go.dev/doc/install)"; exit 1; }
if [ "$(id -u)" != 0 ] && ! command -v clang-16 >/dev/null; then
  say "the first run installs Debian packages: run it as root (or with sudo)"
  exit 1
fi

bash build/pywasm/build.sh
bash build/heavy/build.sh
# npm, on the host: hosted MCP servers' npm packages are installed here and mounted into their
# sandboxes (docs/mcp-hosting.md).
if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ]; then
  say "installing npm (hosted MCP servers' packages)"
  apt-get install -y --no-install-recommends npm >/dev/null
fi
say "building bin/agentbox"
go build -trimpath -o bin/agentbox ./cmd/agentbox
# The first `agentbox run` would otherwise compile python.wasm to machine code (seconds) and initialise
# an interpreter for its snapshot: one run here fills wazero's compilation cache and saves the snapshot
# (reused for an hour; remaking it later costs about 0.35 s). Under sudo the caches are the invoking
# user's, who runs agentbox next.
say "warming the nano tier's caches"
warm=(bin/agentbox run -)
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
  warm=(sudo -u "$SUDO_USER" -H bin/agentbox run -)
fi
if ! echo 'import json, re, statistics, platform' | "${warm[@]}" >/dev/null; then
  say "warming the caches failed; the first run will be slower"
fi
say "ready: bin/agentbox"
