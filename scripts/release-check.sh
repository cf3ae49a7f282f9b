#!/usr/bin/env bash
# CI's proof of the release bundle: scripts/release.sh builds dist/ (signed with a throw-away key),
# then every piece is checked as a user would meet it: the checksums and their signature verify, each
# binary is for the platform its name says, the linux/arm64 binary runs nano under Debian's
# qemu-user-static, and the linux/amd64 platform wheel, installed into a clean venv with nothing
# else, runs code through `from agentbox import Sandbox`.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=go1.27.3

say() { printf '[release-check] %s\n' "$*" >&2; }
fail() { echo "release-check: $*" >&2; exit 1; }

need=""
for p in qemu-user-static python3-build python3-wheel python3-venv openssh-client mypy; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need >/dev/null
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ssh-keygen -q -t ed25519 -N '' -C agentbox-ci -f "$tmp/key"
AGENTBOX_SIGNING_KEY="$tmp/key" bash scripts/release.sh

version=$(cat VERSION)
say "checksums and signature"
(cd dist && sha256sum --quiet -c SHA256SUMS) || fail "SHA256SUMS does not match dist/"
echo "agentbox-ci $(cat "$tmp/key.pub")" >"$tmp/allowed"
ssh-keygen -q -Y verify -f "$tmp/allowed" -I agentbox-ci -n agentbox-release -s dist/SHA256SUMS.sig <dist/SHA256SUMS ||
  fail "SHA256SUMS.sig does not verify"

say "one binary, wheel and SBOM entry per platform"
for t in linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64; do
  goos=${t%/*} goarch=${t#*/} exe=""
  [ "$goos" = windows ] && exe=.exe
  bin="dist/agentbox-$version-$goos-$goarch$exe"
  [ -s "$bin" ] || fail "no $bin"
  info=$(go version -m "$bin")
  grep -q "GOOS=$goos\$" <<<"$info" && grep -q "GOARCH=$goarch\$" <<<"$info" && grep -q "CGO_ENABLED=0\$" <<<"$info" ||
    fail "$bin is not a CGO-free $goos/$goarch build"
  # -trimpath keeps -ldflags out of the build info, so the stamp is looked for in the binary: the
  # commit it was built from is a string no unstamped build holds (linux/amd64 and arm64 also print
  # their version below).
  grep -a -q "$(git rev-parse HEAD)" "$bin" || fail "$bin is not stamped with this commit"
  grep -q "\"file:$(basename "$bin")\"" "dist/agentbox-$version.cdx.json" || fail "the SBOM lacks $bin"
done
[ "$(ls dist/agentbox-"$version"-py3-none-*.whl | wc -l)" = 5 ] || fail "want 5 platform wheels"
[ -s "dist/agentbox-$version.tar.gz" ] || fail "no sdist"
tar -tzf "dist/agentbox-$version.tar.gz" | grep -q '/bin/agentbox' && fail "the sdist carries a binary"

say "the API reference and the Go SDK's page in dist/docs and the docs archive"
[ -s dist/docs/api/index.html ] && [ -s dist/docs/go/index.html ] || fail "no docs in dist/docs"
# grep without -q reads all of tar's output: an early exit would end tar with SIGPIPE, which pipefail reports.
tar -tzf "dist/agentbox-$version-docs.tar.gz" | grep -x 'docs/api/index.html' >/dev/null || fail "the docs archive lacks the API reference"

say "linux/arm64 under qemu-user-static: print(1), an import, a timeout"
arm="qemu-aarch64-static dist/agentbox-$version-linux-arm64"
[ "$(echo 'print(1)' | $arm run --tier nano -)" = 1 ] || fail "arm64: print(1)"
[ "$(echo 'import json; print(json.dumps([1, 2]))' | $arm run --tier nano -)" = "[1, 2]" ] || fail "arm64: import json"
code=0
out=$(echo 'while True: pass' | $arm run --json --timeout 2s --tier nano -) || code=$?
[ "$code" = 124 ] && grep -q '"timed_out":true' <<<"$out" || fail "arm64: a 2 s timeout gave exit $code: $out"
$arm version | grep -q "linux/arm64" || fail "arm64: version"
$arm version | grep -q "^agentbox $version\$" || fail "arm64: not stamped with version $version"
"dist/agentbox-$version-linux-amd64" version | grep -q "^agentbox $version\$" || fail "amd64: not stamped with version $version"

say "the linux/amd64 wheel in a clean venv"
/usr/bin/python3 -m venv "$tmp/venv" # no system site packages: the wheel must need nothing else
"$tmp/venv/bin/pip" install -q --no-index "dist/agentbox-$version-py3-none-manylinux_2_17_x86_64.musllinux_1_1_x86_64.whl"
(cd "$tmp" && env -u AGENTBOX_BIN PATH=/usr/bin:/bin "$tmp/venv/bin/python" - <<'PY'
from agentbox import Sandbox
import agentbox._binary as b
assert b.bundled_binary(), "the wheel's binary is not found"
with Sandbox() as s:
    r = s.run("print(1)")
assert r.stdout == "1\n" and r.exit_code == 0, (r.stdout, r.exit_code)
print("wheel ok:", b.bundled_binary())
PY
) || fail "the wheel does not run code"

say "the installed wheel's types (py.typed) check in a user's program"
cat >"$tmp/user.py" <<'PY'
from agentbox import Sandbox, SandboxResult

def first_line(code: str) -> str:
    with Sandbox() as s:
        r: SandboxResult = s.run(code)
    return r.stdout.splitlines()[0]
PY
cat >"$tmp/wrong.py" <<'PY'
from agentbox import Sandbox
n: int = Sandbox().run("print(1)").stdout
PY
mypy_user() { /usr/bin/python3 -m mypy --no-incremental --cache-dir /dev/null --python-executable "$tmp/venv/bin/python" "$@"; }
mypy_user "$tmp/user.py" || fail "a correct user program does not type-check against the wheel"
if mypy_user "$tmp/wrong.py" >"$tmp/wrong.log" 2>&1; then fail "mypy did not see the wheel's types (py.typed)"; fi
grep -q 'Incompatible types in assignment' "$tmp/wrong.log" || fail "mypy: $(cat "$tmp/wrong.log")"
