#!/usr/bin/env bash
# Builds the nano tier's interpreter: CPython 3.11 for wasm32-wasi, from Debian's source packages only.
#
# Outputs (into OUT, default internal/pywasm/assets):
#   python.wasm   reactor module with the agentbox embedding (see embed.c), debug info stripped
#   stdlib.zip    pruned standard library, .py + unchecked-hash .pyc, laid out under lib/python3.11/
#   modules.txt   top-level modules the build provides (used by the router)
#   BUILD-KEY     the cache key the artefacts were built for
#
# The result is cached in CACHE (default ~/.cache/agentbox/pywasm/<key>), keyed by the pinned upstream
# versions and the hash of this script and the embedding source, so a second run copies and exits.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
OUT=${OUT:-$root/internal/pywasm/assets}
CACHE=${AGENTBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentbox}/pywasm
JOBS=${JOBS:-$(nproc)}

# Upstream versions of bookworm's source packages; any Debian revision of them will do, because only the
# pristine upstream tarballs are used.
PY_VER=3.11.2
ZLIB_VER=1.2.13
BZIP2_VER=1.0.8
XZ_VER=5.4.1
SQLITE_VER=3.40.1
PACKAGES="clang-16 lld-16 llvm-16 wasi-libc libclang-rt-16-dev-wasm32 python3.11 dpkg-dev tcl gcc make zip binaryen"

key=$(cat "$0" "$here/embed.c" "$here/prune.txt" "$here/sqlite-wasi.h" | sha256sum | cut -c1-16)-py$PY_VER
dest=$CACHE/$key

say() { printf '[pywasm] %s\n' "$*" >&2; }

# quiet NAME CMD...: runs CMD with its output in a log, shown only when CMD fails.
quiet() {
  local name=$1
  shift
  if ! "$@" >"$work/$name.log" 2>&1; then
    tail -40 "$work/$name.log" >&2
    say "$name failed (full log: $work/$name.log)"
    exit 1
  fi
}

install_out() {
  mkdir -p "$OUT"
  cp "$dest/python.wasm" "$dest/stdlib.zip" "$dest/modules.txt" "$OUT/"
  echo "$key" >"$OUT/BUILD-KEY"
  say "python.wasm $(du -h "$OUT/python.wasm" | cut -f1), stdlib.zip $(du -h "$OUT/stdlib.zip" | cut -f1) -> $OUT"
}

if [ -f "$dest/python.wasm" ] && [ -f "$dest/stdlib.zip" ] && [ -f "$dest/modules.txt" ]; then
  say "cached build $key"
  install_out
  exit 0
fi

# --- toolchain -------------------------------------------------------------------------------------------
missing=""
for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  say "installing$missing"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
fi

# Source packages come from the machine's own Debian archive entries, re-typed as deb-src.
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  say "enabling deb-src entries"
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
    >/etc/apt/sources.list.d/agentbox-deb-src.sources
  apt-get update -q >/dev/null
fi

work=$CACHE/work-$key
rm -rf "$CACHE"/work-*
mkdir -p "$work/src" "$work/prefix/include" "$work/prefix/lib" "$work/sysroot"
cd "$work/src"

# fetch PKG UPSTREAM_VERSION: downloads the newest Debian revision of that upstream version whose files
# all download (the newest security revision's .dsc is sometimes missing from the mirror).
fetch() {
  local pkg=$1 up=$2 v
  for v in $(apt-cache showsrc "$pkg" | awk '/^Version:/{print $2}' | sort -rV | uniq); do
    case "$v" in *:"$up"*|"$up"*) ;; *) continue ;; esac
    if apt-get source --download-only -q "$pkg=$v" >/dev/null 2>&1; then
      say "source $pkg $v"
      return 0
    fi
    say "source $pkg $v did not download, trying an older revision"
  done
  say "no downloadable source of $pkg $up"; exit 1
}
fetch python3.11 $PY_VER
fetch zlib $ZLIB_VER
fetch bzip2 $BZIP2_VER
fetch xz-utils $XZ_VER
fetch sqlite3 $SQLITE_VER
for t in *.orig.tar.*; do tar xf "$t"; done

# A private sysroot: Debian's wasi-libc, and nothing of glibc's headers.
mkdir -p "$work/sysroot/include" "$work/sysroot/lib"
ln -s /usr/include/wasm32-wasi "$work/sysroot/include/wasm32-wasi"
ln -s /usr/lib/wasm32-wasi "$work/sysroot/lib/wasm32-wasi"
export CC="clang-16 --target=wasm32-wasi --sysroot=$work/sysroot"
export AR=llvm-ar-16 RANLIB=llvm-ranlib-16
P=$work/prefix
WCFLAGS="-O2 -I$P/include"

# --- zlib ----------------------------------------------------------------------------------------------------
say "zlib $ZLIB_VER"
cd "$work/src"/zlib-$ZLIB_VER*
quiet zlib-configure env CHOST=wasm32-wasi CFLAGS="$WCFLAGS" ./configure --static --prefix="$P"
quiet zlib-make make -j"$JOBS" libz.a
quiet zlib-install make install

# --- bzip2 ---------------------------------------------------------------------------------------------------
say "bzip2 $BZIP2_VER"
cd "$work/src"/bzip2-$BZIP2_VER
quiet bzip2-make make -j"$JOBS" libbz2.a CC="$CC" AR="$AR" RANLIB="$RANLIB" CFLAGS="$WCFLAGS -D_FILE_OFFSET_BITS=64"
cp libbz2.a "$P/lib/" && cp bzlib.h "$P/include/"

# --- xz (liblzma) --------------------------------------------------------------------------------------------
say "xz $XZ_VER"
cd "$work/src"/xz-$XZ_VER
# WASI has no signals: skip the sigprocmask block.
sed -i 's/^#if !(defined(_WIN32) && !defined(__CYGWIN__))$/#if !(defined(_WIN32) \&\& !defined(__CYGWIN__)) \&\& !defined(__wasi__)/' src/common/mythread.h
grep -q '__wasi__' src/common/mythread.h || { say "xz: mythread.h patch did not apply"; exit 1; }
quiet xz-configure env CFLAGS="$WCFLAGS" ./configure --host=wasm32-wasi --prefix="$P" --disable-threads \
  --disable-shared --enable-static --disable-xz --disable-xzdec --disable-lzmadec --disable-lzmainfo \
  --disable-scripts --disable-doc --disable-nls
quiet xz-make make -j"$JOBS" -C src/liblzma
quiet xz-install make -C src/liblzma install

# --- sqlite3 -------------------------------------------------------------------------------------------------
say "sqlite $SQLITE_VER"
cd "$work/src"/sqlite3-$SQLITE_VER*
# The amalgamation is generated with the host compiler (it needs tclsh).
[ -f sqlite3.c ] || quiet sqlite-amalgamation sh -c 'CC=gcc ./configure && make sqlite3.c'

quiet sqlite-compile $CC $WCFLAGS -include "$here/sqlite-wasi.h" -D_WASI_EMULATED_GETPID \
  -DSQLITE_THREADSAFE=0 -DSQLITE_OMIT_LOAD_EXTENSION -DSQLITE_OMIT_WAL -DSQLITE_TEMP_STORE=2 \
  -DSQLITE_ENABLE_FTS5 -DSQLITE_ENABLE_MATH_FUNCTIONS -c sqlite3.c -o sqlite3.o
$AR rcs "$P/lib/libsqlite3.a" sqlite3.o
cp sqlite3.h sqlite3ext.h "$P/include/"

# --- CPython -------------------------------------------------------------------------------------------------
say "cpython $PY_VER (configure)"
cd "$work/src/Python-$PY_VER"
cp "$here/embed.c" Programs/agentbox_embed.c
mkdir -p builddir/wasi && cd builddir/wasi
CONFIG_SITE=../../Tools/wasm/config.site-wasm32-wasi \
ac_cv_func_clock_nanosleep=no ac_cv_lib_rt_clock_nanosleep=no \
CFLAGS="-Wno-error=int-conversion" \
ZLIB_CFLAGS="-I$P/include" ZLIB_LIBS="-L$P/lib -lz" \
BZIP2_CFLAGS="-I$P/include" BZIP2_LIBS="-L$P/lib -lbz2" \
LIBLZMA_CFLAGS="-I$P/include" LIBLZMA_LIBS="-L$P/lib -llzma" \
LIBSQLITE3_CFLAGS="-I$P/include" LIBSQLITE3_LIBS="-L$P/lib -lsqlite3" \
PKG_CONFIG=false \
  ../../configure --host=wasm32-unknown-wasi --build="$(../../config.guess)" \
  --with-build-python=/usr/bin/python3.11 --disable-shared --disable-ipv6 --without-ensurepip \
  --prefix=/usr/local >"$work/cpython-configure.log" 2>&1 || { tail -30 "$work/cpython-configure.log"; exit 1; }

# Speed (docs/nano-performance.md): CPython's own -O3 (OPT) applies, as no -O2 follows it in CFLAGS,
# and the interpreter is built with ThinLTO. CFLAGS_NODIST reaches only CPython's own objects, not
# configure's probes, some of which read constants out of object files and cannot read bitcode.
LTO="-flto=thin"
say "cpython $PY_VER (make, about 2 minutes)"
quiet cpython-make make -j"$JOBS" python.wasm CFLAGS_NODIST="$LTO"
# The compression and database modules must have been built, not silently dropped.
for m in ZLIB _BZ2 _LZMA _SQLITE3; do
  grep -qE "^MODULE_${m}_STATE=yes" Makefile || { say "module $m was not built"; grep -E "^MODULE_${m}_STATE" Makefile; exit 1; }
done

# Relink the same objects as python.wasm with our embedding entry as a reactor.
say "linking the reactor"
link=$(make -n python.wasm -W Programs/python.o 2>/dev/null | grep -E -- '-o python\.wasm ' | tail -1)
[ -n "$link" ] || { say "could not read the python.wasm link line"; exit 1; }
quiet embed-compile $CC -c -O3 $LTO -I. -I../../Include -I../../Include/internal -DPy_BUILD_CORE_BUILTIN \
  ../../Programs/agentbox_embed.c -o agentbox_embed.o
# wazero's filesystem interface cannot say ENOSPC; embed.c's wrappers ask the host for the real errno.
wraps=""
for f in fd_write fd_pwrite path_open path_create_directory fd_filestat_set_size path_rename; do
  wraps="$wraps -Wl,--wrap=__wasi_$f"
done
link=${link/ Programs\/python.o / agentbox_embed.o }
# Without the stock 10 MiB initial memory the module starts at what its data and stack need, so the
# snapshot is only as large as the initialised interpreter.
case "$link" in *--initial-memory=10485760*) link=${link/-Wl,--initial-memory=10485760/} ;; *) say "note: the link line sets no 10 MiB initial memory" ;; esac
link=${link/-o python.wasm /-o agentbox.wasm -mexec-model=reactor -Wl,--export=malloc -Wl,--export=free -Wl,--export=__stack_pointer -Wl,--strip-debug $wraps }
quiet link eval "$link"
# Binaryen's optimiser over the whole module (Debian's binaryen); its passes keep the exports.
quiet wasm-opt wasm-opt -O3 agentbox.wasm -o agentbox.opt.wasm
mv agentbox.opt.wasm agentbox.wasm

# --- stdlib --------------------------------------------------------------------------------------------------
say "standard library"
stage=$work/stage/lib/python3.11
mkdir -p "$stage"
cp -r ../../Lib/. "$stage/"
quiet sysconfigdata make pybuilddir.txt
cp "$(cat pybuilddir.txt)/_sysconfigdata__wasi_wasm32-wasi.py" "$stage/"
while read -r pat; do
  case "$pat" in ''|'#'*) continue ;; esac
  rm -rf "$stage"/$pat
done <"$here/prune.txt"
find "$stage" -name '__pycache__' -prune -exec rm -rf {} +
# Unchecked-hash .pyc files: imports never stat the source to validate them, and builds are reproducible.
quiet compileall /usr/bin/python3.11 -m compileall -q -j "$JOBS" --invalidation-mode unchecked-hash \
  -d /usr/local/lib/python3.11 "$stage"

# Which top-level modules this build provides: builtins compiled in, plus the pruned stdlib.
{
  sed -n 's/^\s*{"\([A-Za-z0-9_]*\)", [A-Za-z0-9_]*},.*/\1/p' Modules/config.c
  printf '%s\n' sys builtins
  (cd "$stage" && ls -1 | sed -n -e 's/\.py$//p' -e '/^[A-Za-z_][A-Za-z0-9_]*$/p' | while read -r n; do
     if [ -f "$n.py" ] || [ -f "$n/__init__.py" ]; then echo "$n"; fi; done)
} | sort -u >"$work/modules.txt"

mkdir -p "$dest"
(cd "$work/stage" && rm -f "$dest/stdlib.zip" && zip -q -9 -r -X "$dest/stdlib.zip" lib)
cp agentbox.wasm "$dest/python.wasm"
cp "$work/modules.txt" "$dest/modules.txt"
rm -rf "$work"
install_out
