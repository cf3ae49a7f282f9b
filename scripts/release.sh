#!/usr/bin/env bash
# The release bundle, in dist/: agentbox for every platform we ship (CGO off; python.wasm is the
# same on all of them), the Python SDK's platform wheels (each carrying its platform's agentbox) and
# its sdist (the pure client), the OpenAPI contract, the docs (dist/docs, scripts/docs.sh, and an
# archive of them), an SBOM, SHA256SUMS and, when AGENTBOX_SIGNING_KEY names an ssh ed25519 private
# key, SHA256SUMS.sig (ssh-keygen -Y sign).
# Offline: Go modules from the module proxy's cache, Debian's python3-build and python3-wheel.
# Needs the interpreter built (scripts/setup.sh, or build/pywasm/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=go1.27.3 CGO_ENABLED=0

say() { printf '[release] %s\n' "$*" >&2; }

version=$(cat VERSION)
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || { echo "VERSION $version is not SemVer"; exit 1; }
pyversion=$(sed -n 's/^version = "\(.*\)"$/\1/p' sdk/python/pyproject.toml)
[ "$pyversion" = "$version" ] || { echo "sdk/python/pyproject.toml says $pyversion, VERSION says $version"; exit 1; }
[ -s internal/pywasm/assets/python.wasm ] || { echo "no interpreter: run scripts/setup.sh first"; exit 1; }

commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$commit" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  commit="$commit-dirty"
fi
# The commit's time, not now: two builds of one commit stamp the same date (reproducible bytes).
date=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}" +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w -X github.com/entersandbox/agentbox/internal/cli.buildVersion=$version"
ldflags+=" -X github.com/entersandbox/agentbox/internal/cli.buildCommit=$commit"
ldflags+=" -X github.com/entersandbox/agentbox/internal/cli.buildDate=$date"

# GOOS/GOARCH and the wheel's platform tag. Go binaries with CGO off link no libc, so one Linux
# wheel serves glibc and musl alike; Go 1.27 needs macOS 12.
targets=(
  "linux/amd64 manylinux_2_17_x86_64.musllinux_1_1_x86_64"
  "linux/arm64 manylinux_2_17_aarch64.musllinux_1_1_aarch64"
  "darwin/amd64 macosx_12_0_x86_64"
  "darwin/arm64 macosx_12_0_arm64"
  "windows/amd64 win_amd64"
)
if [ -n "${RELEASE_TARGETS:-}" ]; then # a subset, e.g. RELEASE_TARGETS="linux/amd64" for a quick check
  keep=()
  for t in "${targets[@]}"; do [[ " $RELEASE_TARGETS " == *" ${t%% *} "* ]] && keep+=("$t"); done
  targets=("${keep[@]}")
fi

rm -rf dist && mkdir -p dist
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

bins=()
for t in "${targets[@]}"; do
  goos_arch=${t%% *}; goos=${goos_arch%/*}; goarch=${goos_arch#*/}
  exe=""; [ "$goos" = windows ] && exe=.exe
  out="dist/agentbox-$version-$goos-$goarch$exe"
  say "agentbox $version for $goos/$goarch"
  GOOS=$goos GOARCH=$goarch go build -trimpath -ldflags "$ldflags" -o "$out" ./cmd/agentbox
  bins+=("$out")
done

say "Python sdist (the pure client)"
cp -r sdk/python "$work/sdk"
rm -rf "$work/sdk/build" "$work/sdk"/*.egg-info "$work/sdk/agentbox/bin"
/usr/bin/python3 -m build --no-isolation --sdist --outdir dist "$work/sdk" >"$work/build.log" 2>&1 ||
  { cat "$work/build.log"; exit 1; }

for t in "${targets[@]}"; do
  goos_arch=${t%% *}; plat=${t#* }; goos=${goos_arch%/*}; goarch=${goos_arch#*/}
  exe=""; [ "$goos" = windows ] && exe=.exe
  say "Python wheel for $goos/$goarch ($plat)"
  stage="$work/wheel-$goos-$goarch"
  cp -r "$work/sdk" "$stage"
  mkdir -p "$stage/agentbox/bin"
  install -m 0755 "dist/agentbox-$version-$goos-$goarch$exe" "$stage/agentbox/bin/agentbox$exe"
  /usr/bin/python3 -m build --no-isolation --wheel --outdir "$stage/out" "$stage" >"$work/build.log" 2>&1 ||
    { cat "$work/build.log"; exit 1; }
  /usr/bin/python3 build/release/wheeltag.py "$stage/out/agentbox-$version-py3-none-any.whl" "$plat" dist >/dev/null
done

cp internal/server/openapi.yaml "dist/agentbox-$version-openapi.yaml"

say "docs: the API reference and the Go SDK's (dist/docs, and one archive of it)"
bash scripts/docs.sh dist/docs
# A release page takes files, not directories; the archive's bytes depend only on the commit.
tar --sort=name --mtime="$date" --owner=0 --group=0 --numeric-owner -C dist -cf - docs |
  gzip -n >"dist/agentbox-$version-docs.tar.gz"

say "SBOM (CycloneDX)"
go run ./build/release/sbom -version "$version" -date "$date" -pyproject sdk/python/pyproject.toml \
  "${bins[@]}" >"dist/agentbox-$version.cdx.json"

say "SHA256SUMS"
# The files of dist/ itself (dist/docs is in the docs archive).
(cd dist && find . -maxdepth 1 -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum --) >"$work/SHA256SUMS"
mv "$work/SHA256SUMS" dist/SHA256SUMS
if [ -n "${AGENTBOX_SIGNING_KEY:-}" ]; then
  say "signing SHA256SUMS with $AGENTBOX_SIGNING_KEY"
  ssh-keygen -q -Y sign -f "$AGENTBOX_SIGNING_KEY" -n agentbox-release dist/SHA256SUMS
fi
ls -l dist >&2
