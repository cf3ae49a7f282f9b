#!/usr/bin/env bash
# Builds what the heavy tier needs: runsc (gVisor, pinned, from the Go module proxy) and a read-only
# Debian bookworm root filesystem with CPython, numpy, pandas, matplotlib, scipy, plotly and seaborn, and Node.js (for MCP servers).
#
# Outputs (cached under CACHE, default ~/.cache/agentbox/heavy):
#   bin/runsc                 gVisor's runtime
#   rootfs-<key>/             the root filesystem (key: this script's hash); a symlink rootfs -> it
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
CACHE=${AGENTBOX_HEAVY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentbox/heavy}
RUNSC_VERSION=v0.0.0-20260905035102-160fafc42237
PACKAGES="python3,python3-numpy,python3-pandas,python3-matplotlib,python3-scipy,python3-plotly,python3-seaborn,python3-jinja2,nodejs,python3-pip,python3-wheel,fonts-dejavu-core,ca-certificates"

say() { printf '[heavy] %s\n' "$*" >&2; }
mkdir -p "$CACHE/bin"

# --- runsc ----------------------------------------------------------------------------------------------
if [ ! -x "$CACHE/bin/runsc" ] || [ "$(cat "$CACHE/bin/runsc.version" 2>/dev/null)" != "$RUNSC_VERSION" ]; then
  say "building runsc $RUNSC_VERSION (about a minute)"
  CGO_ENABLED=0 GOBIN="$CACHE/bin" go install "gvisor.dev/gvisor/runsc@$RUNSC_VERSION"
  echo "$RUNSC_VERSION" >"$CACHE/bin/runsc.version"
fi
say "runsc: $("$CACHE/bin/runsc" --version 2>/dev/null | head -1)"

# --- root filesystem ----------------------------------------------------------------------------------
key=$(cat "$0" | sha256sum | cut -c1-12)
rootfs=$CACHE/rootfs-$key
if [ ! -f "$rootfs/.agentbox-complete" ]; then
  command -v debootstrap >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null; }
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  say "debootstrap bookworm from $mirror with $PACKAGES (a few minutes; progress below)"
  rm -rf "$rootfs" "$rootfs.tmp"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs.tmp" "$mirror" 2>&1 |
    grep --line-buffered -E '^I: (Retrieving|Validating|Extracting|Installing|Configuring|Base system)' |
    awk '{ n++; if (n % 40 == 1 || /Base system/) print "[heavy] debootstrap: " $0; fflush() }' >&2
  [ -x "$rootfs.tmp/usr/bin/python3" ] || { say "debootstrap failed"; exit 1; }
  # The unprivileged user programs run as, and its home.
  chroot "$rootfs.tmp" /usr/sbin/groupadd -g 1000 sandbox
  chroot "$rootfs.tmp" /usr/sbin/useradd -u 1000 -g 1000 -d /home/user -s /bin/sh sandbox
  mkdir -p "$rootfs.tmp/home/user" "$rootfs.tmp/opt/agentbox" "$rootfs.tmp/data" "$rootfs.tmp/output"
  # Byte-compile and warm matplotlib's font cache once, so sandboxes do not.
  chroot "$rootfs.tmp" /usr/bin/python3 -c "import numpy, pandas, scipy, matplotlib, plotly, seaborn, jinja2; matplotlib.use('Agg'); import matplotlib.pyplot as plt; plt.figure(); plt.close('all')"
  cp -r "$rootfs.tmp/root/.cache/matplotlib" "$rootfs.tmp/etc/matplotlib-cache" 2>/dev/null || true
  rm -rf "$rootfs.tmp/var/cache/apt/archives"/*.deb "$rootfs.tmp/var/lib/apt/lists"/*
  touch "$rootfs.tmp/.agentbox-complete"
  mv "$rootfs.tmp" "$rootfs"
fi
ln -sfn "$rootfs" "$CACHE/rootfs"
say "rootfs: $rootfs ($(du -sh "$rootfs" | cut -f1))"
