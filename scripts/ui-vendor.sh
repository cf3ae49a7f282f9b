#!/usr/bin/env bash
# Copies the web console's browser libraries from the npm packages pinned in ui/package-lock.json into
# internal/console/static/vendor (committed, so go build needs no node), and writes their versions and
# licences to internal/console/static/vendor/VERSIONS. With --check it only verifies that the committed
# copies are those of the lockfile (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
check=0
[[ "${1:-}" == "--check" ]] && check=1
(cd ui && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
dst=internal/console/static/vendor
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# package  file-in-package  name-in-vendor
files=(
  "htmx.org dist/htmx.min.js htmx.min.js"
  "@xterm/xterm lib/xterm.js xterm.js"
  "@xterm/xterm css/xterm.css xterm.css"
  "plotly.js-dist-min plotly.min.js plotly.min.js"
  "vega build/vega.min.js vega.min.js"
  "vega-lite build/vega-lite.min.js vega-lite.min.js"
  "vega-embed build/vega-embed.min.js vega-embed.min.js"
)
{
  echo "# Vendored by scripts/ui-vendor.sh from ui/package-lock.json; do not edit."
  echo "# file package version licence"
} > "$out/VERSIONS"
for f in "${files[@]}"; do
  read -r pkg src name <<<"$f"
  cp "ui/node_modules/$pkg/$src" "$out/$name"
  # The licence travels with the copy (the binary embeds both).
  cp "ui/node_modules/$pkg/LICENSE" "$out/LICENSE.${pkg//\//_}"
  meta=$(node -e "const p=require('./ui/node_modules/$pkg/package.json'); console.log(p.name+' '+p.version+' '+p.license)")
  grep -q "^$name " "$out/VERSIONS" || echo "$name $meta" >> "$out/VERSIONS"
done
# Libraries over 1 MiB are kept gzipped (-n: no name or time, so the copy is reproducible); the console
# serves them with Content-Encoding: gzip (internal/console/gzip.go), and git holds no file over 4 MiB.
gzip -9n "$out/plotly.min.js"
if (( check )); then
  diff -r "$out" "$dst" && echo "vendored console libraries match ui/package-lock.json"
  exit
fi
mkdir -p "$dst"
rm -f "$dst"/*
cp "$out"/* "$dst"/
cat "$dst/VERSIONS"
