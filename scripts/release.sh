#!/usr/bin/env bash
# The release bundle, in dist/: agentbox for every platform we ship (CGO off; python.wasm is the
# same on all of them), the Python SDK's platform wheels (each carrying its platform's agentbox) and
# its sdist (the pure client), the OpenAPI contract, the docs (dist/docs, scripts/docs.sh, and an
# archive of them), an SBOM, SHA256SUMS and, when AGENTBOX_SIGNING_KEY names an ssh ed25519 private
# key, SHA256SUMS.sig (ssh-keygen -Y sign). With --image, also the server's container image with the
# heavy tier, agentbox-image-<version>.tar (build/image; docs/container-image.md), from the cached
# runsc and root filesystem of build/heavy.
# Offline: Go modules from the module proxy's cache, Debian's python3-build and python3-wheel.
# Needs the interpreter built (scripts/setup.sh, or build/pywasm/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=go1.27.3 CGO_ENABLED=0

say() { printf '[release] %s\n' "$*" >&2; }

image=""
for arg in "$@"; do
  case "$arg" in
    --image) image=1 ;;
    *) echo "usage: release.sh [--image]" >&2; exit 2 ;;
  esac
done

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

sbom_image=()
if [ -n "$image" ]; then
  heavy=${AGENTBOX_HEAVY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentbox/heavy}
  [ -x "$heavy/bin/runsc" ] && [ -x "$heavy/rootfs/usr/bin/python3" ] ||
    { echo "--image needs the heavy tier's runsc and root filesystem: run build/heavy/build.sh (scripts/setup.sh does)"; exit 1; }
  [ -f "dist/agentbox-$version-linux-amd64" ] || { echo "--image needs the linux/amd64 binary (RELEASE_TARGETS without it)"; exit 1; }
  say "container image agentbox:$version (linux/amd64, heavy tier inside)"
  go run ./build/image -agentbox "dist/agentbox-$version-linux-amd64" -runsc "$heavy/bin/runsc" -rootfs "$heavy/rootfs" -layer-cache "$heavy/image-layers" \
    -version "$version" -revision "$commit" -created "$date" -out "dist/agentbox-image-$version.tar" >"$work/image.digest"
  say "image manifest digest $(cat "$work/image.digest")"
  sbom_image=(-image "dist/agentbox-image-$version.tar" -image-digest "$(cat "$work/image.digest")" -image-runsc "$heavy/bin/runsc" -image-rootfs "$heavy/rootfs")
fi

say "SBOM (CycloneDX)"
go run ./build/release/sbom -version "$version" -date "$date" -pyproject sdk/python/pyproject.toml "${sbom_image[@]}" \
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
