# agentbox heavy-tier agent: runs inside the gVisor sandbox as the unprivileged user and speaks
# line-delimited JSON with the host over its original stdin/stdout.
#
# Requests:  {"id": n, "op": "run", "code": str, "filename": str, "fresh": bool}
#            {"id": n, "op": "write", "path": str, "data": base64}
#            {"id": n, "op": "read", "path": str}
#            {"id": n, "op": "list", "dir": str}
# Answers:   {"id": n, "event": "stdout"|"stderr", "text": str}   (while a run is going)
#            {"id": n, "event": "result", ...}                     (exactly one per request)
# The first line the agent writes is {"event": "ready"}, after its imports.
import base64
import io
import json
import os
import shutil
import sys
import threading
import traceback
import linecache

PROTO = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
REQUESTS = os.fdopen(os.dup(0), "r", encoding="utf-8")
_send_lock = threading.Lock()
_current_id = [0]


def send(msg):
    line = json.dumps(msg)
    with _send_lock:
        PROTO.write(line + "\n")
        PROTO.flush()


_SYNC = b"\x00agentbox-sync\x00"
_synced = {1: threading.Event(), 2: threading.Event()}


def _pump(fd, name, target):
    """Forwards whatever reaches fd 1 or 2 (print, C extensions, subprocesses) as events. A sync
    marker (see _sync) is not forwarded: it tells the main thread that everything before it was."""
    pending = b""
    with os.fdopen(fd, "rb", buffering=0) as r:
        while True:
            chunk = r.read(65536)
            if not chunk:
                return
            pending += chunk
            while True:
                i = pending.find(_SYNC)
                text = pending if i < 0 else pending[:i]
                # Keep a possible start of a marker, or of a UTF-8 sequence, for the next read.
                keep = 0 if i >= 0 else min(len(_SYNC) - 1, len(text))
                while keep and not _SYNC.startswith(text[len(text) - keep:]):
                    keep -= 1
                out = text[: len(text) - keep] if i < 0 else text
                if out:
                    send({"id": _current_id[0], "event": name, "text": out.decode("utf-8", "replace")})
                if i < 0:
                    pending = text[len(text) - keep:]
                    break
                pending = pending[i + len(_SYNC):]
                _synced[target].set()


def _sync():
    """Returns once the pumps have forwarded everything written to fds 1 and 2 so far."""
    for fd in (1, 2):
        _synced[fd].clear()
        os.write(fd, _SYNC)
    for fd in (1, 2):
        _synced[fd].wait(10)


# fd 0 reads nothing; fds 1 and 2 become pipes the agent forwards, so nothing a program writes can
# corrupt the protocol.
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
_pumps = []
for _fd, _name in ((1, "stdout"), (2, "stderr")):
    _r, _w = os.pipe()
    os.dup2(_w, _fd)
    os.close(_w)
    _t = threading.Thread(target=_pump, args=(_r, _name, _fd), daemon=True)
    _t.start()
    _pumps.append(_t)
sys.stdin = io.TextIOWrapper(io.FileIO(0, "r"), encoding="utf-8")
sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True)
sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True)

# Matplotlib's font cache was built into the image; copy it where this user may write.
os.environ.setdefault("MPLCONFIGDIR", os.path.join(os.environ.get("HOME", "/tmp"), ".config", "matplotlib"))
if os.path.isdir("/etc/matplotlib-cache") and not os.path.exists(os.environ["MPLCONFIGDIR"]):
    shutil.copytree("/etc/matplotlib-cache", os.environ["MPLCONFIGDIR"])

if os.environ.get("AGENTBOX_PRELOAD"):
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401

_figures_shown = []


def _capture_figures():
    """PNG artifacts of every matplotlib figure shown or left open; the figures are then closed."""
    plt = sys.modules.get("matplotlib.pyplot")
    artifacts = list(_figures_shown)
    _figures_shown.clear()
    if plt is None:
        return artifacts
    for num in plt.get_fignums():
        artifacts.append(_png(plt.figure(num), num))
    plt.close("all")
    return artifacts


def _png(fig, num):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return {"name": f"figure-{num}.png", "mime": "image/png", "base64": base64.b64encode(buf.getvalue()).decode()}


def _patch_show():
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None or getattr(plt.show, "_agentbox", False):
        return

    def show(*args, **kwargs):
        for num in plt.get_fignums():
            _figures_shown.append(_png(plt.figure(num), num))
        plt.close("all")

    show._agentbox = True
    plt.show = show


_main_globals = {"__name__": "__main__", "__builtins__": __builtins__}


def _exit_code(code):
    if code is None:
        return 0
    if isinstance(code, bool):
        return int(code)
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run(req):
    global _main_globals
    if req.get("fresh"):
        _main_globals = {"__name__": "__main__", "__builtins__": __builtins__}
    filename = req.get("filename") or "main.py"
    code = req["code"]
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    _main_globals["__file__"] = filename
    exit_code, error = 0, None
    _patch_show()
    try:
        compiled = compile(code, filename, "exec", dont_inherit=True)
        _patch_show()
        exec(compiled, _main_globals)
    except SystemExit as e:
        exit_code = _exit_code(e.code)
    except BaseException as e:  # noqa: B036 - everything the program raises is reported
        exit_code = 1
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(e), e, tb))
        sys.stderr.write(text)
        error = {"type": type(e).__name__, "message": str(e), "traceback": text}
    _patch_show()
    artifacts = []
    try:
        artifacts = _capture_figures()
    except Exception as e:  # a broken figure must not lose the run's result
        sys.stderr.write(f"agentbox: could not render figures: {e}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    _sync()
    try:
        has_output = bool(os.listdir("/output"))
    except OSError:
        has_output = False
    return {"exit_code": exit_code, "error": error, "artifacts": artifacts, "has_output": has_output}


def _safe(path):
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise ValueError(f"path must be absolute: {path!r}")
    return path


def handle(req):
    op = req.get("op")
    if op == "run":
        return run(req)
    if op == "write":
        path = _safe(req["path"])
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(req["data"]))
        return {"path": path, "size": os.path.getsize(path)}
    if op == "read":
        with open(_safe(req["path"]), "rb") as f:
            return {"data": base64.b64encode(f.read()).decode()}
    if op == "list":
        d = _safe(req.get("dir") or "/")
        out = []
        for name in sorted(os.listdir(d)):
            p = os.path.join(d, name)
            st = os.lstat(p)
            out.append({"name": name, "path": p, "size": st.st_size, "is_dir": os.path.isdir(p) and not os.path.islink(p), "mtime": st.st_mtime})
        return {"files": out}
    if op == "install":
        # Wheels the host fetched are in req["dir"]; the sandbox itself has no network.
        import subprocess
        import site

        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--user", "--break-system-packages", "--no-index",
             "--disable-pip-version-check", "--no-warn-script-location", "--find-links", _safe(req["dir"]),
             *req["packages"]],
            stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError("pip install failed: " + (proc.stderr or proc.stdout).strip()[-2000:])
        user_site = site.getusersitepackages()
        if user_site not in sys.path:
            sys.path.append(user_site)
        import importlib

        importlib.invalidate_caches()
        return {"installed": req["packages"]}
    if op == "collect":
        # Every regular file under dir (no links followed), within the caps; the rest is named.
        root, max_file, max_total = _safe(req.get("dir") or "/output"), req["max_file"], req["max_total"]
        files, omitted, total = {}, [], 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                size = os.path.getsize(p)
                if size > max_file or total + size > max_total:
                    omitted.append(p)
                    continue
                with open(p, "rb") as f:
                    files[p] = base64.b64encode(f.read()).decode()
                total += size
        return {"files": files, "omitted": omitted}
    raise ValueError(f"unknown op {op!r}")


def main():
    send({"event": "ready", "pid": os.getpid()})
    for line in REQUESTS:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            _current_id[0] = req.get("id", 0)
            result = handle(req)
            send({"id": req.get("id", 0), "event": "result", **result})
        except Exception as e:  # noqa: BLE001 - reported to the host, the agent goes on
            send({"id": _current_id[0], "event": "failed", "type": type(e).__name__, "message": str(e)})


main()
