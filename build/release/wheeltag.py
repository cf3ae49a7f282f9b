#!/usr/bin/env python3
"""Turn the pure wheel of the SDK, built with the agentbox executable inside, into a platform wheel.

Debian 12's python3-wheel (0.38) has no ``wheel tags``, and setuptools tags a package without C
extensions py3-none-any, so this rewrites what the tag lives in: the file name, the WHEEL metadata
(Tag, and Root-Is-Purelib: false, since the package now holds a platform's binary) and RECORD's
hash of WHEEL. The executable keeps its mode bits so that pip installs it runnable.

usage: wheeltag.py WHEEL PLATFORM_TAG OUTDIR   (prints the new wheel's path)
"""

import base64
import hashlib
import os
import sys
import zipfile


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def retag(src: str, plat: str, outdir: str) -> str:
    parts = os.path.basename(src)[: -len(".whl")].split("-")
    if not src.endswith(".whl") or len(parts) != 5:
        raise SystemExit(f"{src}: not a wheel named NAME-VERSION-PY-ABI-PLATFORM.whl")
    name, version, py, abi, old_plat = parts
    if (py, abi, old_plat) != ("py3", "none", "any"):
        raise SystemExit(f"{src}: want a py3-none-any wheel, got {py}-{abi}-{old_plat}")
    tags = [f"py3-none-{p}" for p in plat.split(".")]
    dst = os.path.join(outdir, f"{name}-{version}-py3-none-{plat}.whl")
    dist_info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(src) as zin:
        members = {i.filename: (i, zin.read(i)) for i in zin.infolist()}
    wheel_name = f"{dist_info}/WHEEL"
    lines = [ln for ln in members[wheel_name][1].decode().splitlines()
             if ln.strip() and not ln.startswith(("Tag:", "Root-Is-Purelib:"))]
    lines.insert(2, "Root-Is-Purelib: false")
    wheel_meta = ("\n".join(lines + [f"Tag: {t}" for t in tags]) + "\n").encode()
    members[wheel_name] = (members[wheel_name][0], wheel_meta)
    binaries = [n for n in members if n.startswith(f"{name}/bin/")]
    if len(binaries) != 1:
        raise SystemExit(f"{src}: want one executable under {name}/bin/, got {binaries}")
    record_name = f"{dist_info}/RECORD"
    rows = []
    for n, (_, data) in members.items():
        if n != record_name:
            rows.append(f"{n},{record_hash(data)},{len(data)}")
    rows.append(f"{record_name},,")
    members[record_name] = (members[record_name][0], ("\n".join(rows) + "\n").encode())
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for n, (info, data) in members.items():
            zi = zipfile.ZipInfo(n, date_time=info.date_time)
            zi.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if n in binaries else 0o644
            zi.external_attr = (0o100000 | mode) << 16
            zout.writestr(zi, data)
    return dst


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    print(retag(sys.argv[1], sys.argv[2], sys.argv[3]))
