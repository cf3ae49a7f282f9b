#!/usr/bin/env bash
# The documentation bundle, offline: the HTTP API reference made from internal/server/openapi.yaml
# (DIR/api/index.html, with the OpenAPI file beside it) and the Go SDK's documentation, `go doc -all`
# of the root package as text and as a page with its Example tests (DIR/go/). DIR is dist/docs
# unless given. The generator is our own (build/apidoc, docs/api-reference.md says why).
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=go1.27.3

out=${1:-dist/docs}
rm -rf "$out"
mkdir -p "$out/go"
go doc -all . >"$out/go/agentbox.txt"
go run ./build/apidoc -openapi internal/server/openapi.yaml -version-file VERSION -out "$out" \
  -go ".=$out/go/agentbox.txt"
printf '[docs] %s\n' "$out/api/index.html" "$out/go/index.html" >&2
