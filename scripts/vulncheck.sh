#!/usr/bin/env bash
# govulncheck against an offline copy of the Go vulnerability database: the module golang.org/x/vulndb
# (from the module proxy) ships the OSV files, and its cmd/indexdb turns them into the database layout
# that `govulncheck -db file://DIR` reads. Fails (exit 3, govulncheck's own code) on any vulnerability
# reachable from our code, the standard library's included: the toolchain is pinned for that reason.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=go1.27.3

# Pinned so a run is reproducible offline; bump both with the toolchain (CHANGELOG says when).
VULNDB_VERSION=v0.0.0-20261105234957-e22db6528018
GOVULNCHECK_VERSION=v1.9.0

say() { printf '[vulncheck] %s\n' "$*" >&2; }

db="${AGENTBOX_CACHE:-$HOME/.cache/agentbox}/vulndb/$VULNDB_VERSION"
if [ ! -f "$db/index/db.json" ]; then
  say "building the vulnerability database from golang.org/x/vulndb@$VULNDB_VERSION (once)"
  src=$(go mod download -json "golang.org/x/vulndb@$VULNDB_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$src/data/osv" ] || { echo "golang.org/x/vulndb@$VULNDB_VERSION has no data/osv"; exit 1; }
  rm -rf "$db.tmp" && mkdir -p "$(dirname "$db")"
  go run "golang.org/x/vulndb/cmd/indexdb@$VULNDB_VERSION" -vulns "$src/data/osv" -out "$db.tmp"
  mv "$db.tmp" "$db"
fi

say "govulncheck $GOVULNCHECK_VERSION, $(go version | cut -d' ' -f3), database $VULNDB_VERSION"
# Every platform we ship: the darwin and windows builds leave the Linux-only packages out, and
# govulncheck only follows what a platform's build imports.
# govulncheck itself is built once for this machine; GOOS/GOARCH then only say which build it analyses
# (with `go run` they would also cross-build govulncheck, which cannot then start here).
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
GOBIN="$bin" go install "golang.org/x/vuln/cmd/govulncheck@$GOVULNCHECK_VERSION"
for target in linux/amd64 linux/arm64 darwin/arm64 darwin/amd64 windows/amd64; do
  say "$target"
  # Off Linux, what ships is the binary and the SDK packages (the heavy tier's packages do not build
  # there, and nothing that ships imports them).
  pkgs=./...
  [ "${target%/*}" = linux ] || pkgs="./cmd/agentbox . ./api ./local"
  # shellcheck disable=SC2086 # a list of package patterns
  GOOS=${target%/*} GOARCH=${target#*/} CGO_ENABLED=0 "$bin/govulncheck" -db "file://$db" $pkgs
done

# What this gate cannot see. The Python SDK has no dependencies (sdk/python/pyproject.toml), so there
# is nothing to check there. The heavy tier's root filesystem is Debian packages; checking them needs
# Debian's security tracker data (debsecan fetches it from security-tracker.debian.org), which has no
# offline copy here: the list is printed so that it can be checked where the tracker is reachable.
rootfs="${AGENTBOX_CACHE:-$HOME/.cache/agentbox}/heavy/rootfs"
if [ -f "$rootfs/var/lib/dpkg/status" ]; then
  n=$(grep -c '^Package: ' "$rootfs/var/lib/dpkg/status")
  say "heavy rootfs: $n Debian packages, not checked (no offline copy of Debian's security tracker data)"
fi
