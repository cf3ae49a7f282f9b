# agentbox heavy-tier agent: runs inside the gVisor sandbox as the unprivileged user.
#
# Two kinds of process. The supervisor (this script's first process, PID 1 of the sandbox) speaks
# line-delimited JSON with the host over its original stdin/stdout and never runs a program. It forks
# a worker, which closes the protocol fds before it runs anything, and relays the worker's answers to
# the host: each line within the request's max_line, valid JSON, tagged with the request's id. The
# supervisor is not dumpable, so the worker (same uid) cannot ptrace it or open its /proc/1/fd.
# Preloaded modules stay warm in the worker: it is forked from the supervisor after the imports.
#
# Requests come as two lines: a header {"id": n, "op": str, "max_line": n}, then the request itself:
#            {"id": n, "op": "run", "code": str, "filename": str, "fresh": bool, "repl": bool, "svg": bool}
#            {"id": n, "op": "write", "path": str, "data": base64}
#            {"id": n, "op": "read", "path": str, "max": n}
#            {"id": n, "op": "list", "dir": str}
#            {"id": n, "op": "collect", "dir": str, "max_file": n, "max_total": n}
#            {"id": n, "op": "install", "dir": str, "packages": [str]}
#            {"id": n, "op": "inspect", "reseed": bool, "state": bool}   (time travel: steps.go)
#            {"id": n, "op": "env", "env": {str: str}}                 (added to os.environ)
#            {"id": n, "op": "exec", "cmd": str, "args": [str], "shell": bool, "cwd": str, "env": {},
#             "stdin": str, "timeout_ms": n, "background": bool, "max_output": n}
#            {"id": n, "op": "cmd_read", "pid": n, "out_from": n, "err_from": n, "wait_ms": n}
#            {"id": n, "op": "cmd_input", "pid": n, "data": str, "close": bool}
#            {"id": n, "op": "cmd_signal", "pid": n, "signal": str}
#            {"id": n, "op": "cmd_list"}
# Answers:   {"id": n, "event": "stdout"|"stderr", "text": str}   (while a run is going)
#            {"id": n, "event": "output", "output": {...}}          (a rich output, in order with those)
#            {"id": n, "event": "data", "base64": str}             (a chunk of a read)
#            {"id": n, "event": "procs", "count": n}               (processes running, when many)
#            {"id": n, "event": "result", ...} or
#            {"id": n, "event": "failed", "type": str, "message": str}   (exactly one per request)
# The first line the agent writes is {"event": "ready"}, after its imports.
import base64
import builtins
import importlib.util
import io
import json
import linecache
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback

PROTO_IN = os.dup(0)
PROTO_OUT = os.dup(1)
MAX_TEXT = 64 << 10  # of an error message or traceback
MAX_ENTRIES = 10000  # of a directory listing
MAX_OMITTED = 1000  # names of /output files left out of a collect
CHUNK = 1 << 20  # of a read, per data event
PROCS_REPORT = 4  # report the process count from this many on


def _set_dumpable(on):
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 1 if on else 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except Exception as e:  # noqa: BLE001 - without it the worker could reach the supervisor
        os.write(2, f"agentbox: prctl(PR_SET_DUMPABLE): {e}\n".encode())


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# fd 0 reads nothing; the supervisor's own fds 1 and 2 go to runsc's stderr (the host keeps a little
# of it for diagnostics), never to the protocol.
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.dup2(2, 1)
_set_dumpable(False)

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
import random  # noqa: E402,F401 - imported before the fork, reseeded in every worker

# Rich results (internal/outputs/outputs.py), written next to this file by the host.
_spec = importlib.util.spec_from_file_location("_agentbox_outputs", os.path.join(os.path.dirname(__file__), "outputs.py"))
outputs = importlib.util.module_from_spec(_spec)
sys.modules["_agentbox_outputs"] = outputs
_spec.loader.exec_module(outputs)
outputs.install_hooks()
builtins.display = outputs.display
_OWN_FILES = frozenset((__file__, outputs.__file__))


# ---------------------------------------------------------------------------------------------------
# The worker: runs programs and file operations, writes its answers to its result pipe.

_res_fd = -1
_send_lock = threading.Lock()
_current_id = [0]


def send(msg):
    line = (json.dumps(msg) + "\n").encode()
    with _send_lock:
        _write_all(_res_fd, line)


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


def _reseed():
    """Fresh random state for a fresh run: a pooled worker's generators were copied from one golden
    checkpoint. numpy's default_rng() draws from os.urandom on each call already."""
    random.seed(os.urandom(32))
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(np.frombuffer(os.urandom(32), dtype=np.uint32))
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile._name_sequence = None


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


def _clip(text):
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT // 2] + "\n[...]\n" + text[-MAX_TEXT // 2:]


def _emitter(rid, max_line):
    """Sends outputs as events after everything printed before them; one too long for the channel
    is replaced by a note (the host caps the rest)."""

    def emit(output):
        sys.stdout.flush()
        sys.stderr.flush()
        _sync()
        text = outputs.encode(output)
        if len(text) > max_line:
            text = json.dumps({"type": output["type"], "is_main_result": output.get("is_main_result", False), "metadata": {},
                               "data": {"text/plain": f"[output left out: {len(text)} bytes, more than the {max_line} a run may send at once]"}})
        line = ('{"id": %d, "event": "output", "output": %s}\n' % (rid, text)).encode()
        with _send_lock:
            _write_all(_res_fd, line)

    return emit


def run(req):
    global _main_globals
    if req.get("fresh"):
        _main_globals = {"__name__": "__main__", "__builtins__": __builtins__}
        _reseed()
    filename = req.get("filename") or "main.py"
    code = req["code"]
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    _main_globals["__file__"] = filename
    exit_code, error = 0, None
    outputs.begin(_emitter(req.get("id", 0), int(req.get("max_line") or (1 << 20)) - 4096), svg=req.get("svg"))
    try:
        outputs.run(code, filename, _main_globals, req.get("repl", False))
    except SystemExit as e:
        exit_code = _exit_code(e.code)
    except BaseException as e:  # noqa: B036 - everything the program raises is reported
        exit_code = 1
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename in _OWN_FILES:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(e), e, tb))
        sys.stderr.write(text)
        error = {"type": type(e).__name__[:200], "message": _clip(str(e)), "traceback": _clip(text)}
    try:
        outputs.show_figures()  # those left open, like Jupyter's inline backend
    except Exception as e:  # noqa: BLE001 - a broken figure must not lose the run's result
        sys.stderr.write(f"agentbox: could not render figures: {e}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    _sync()
    try:
        has_output = bool(os.listdir("/output"))
    except OSError:
        has_output = False
    return {"exit_code": exit_code, "error": error, "has_output": has_output}


class FileTooLarge(Exception):
    pass


class NotRegularFile(Exception):
    pass


def _safe(path):
    if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
        raise ValueError(f"path must be absolute: {path!r}")
    return path


def read(req):
    """Sends the file in data events of CHUNK bytes; refuses one larger than req["max"] before reading
    it (and stops reading if it grows past it meanwhile)."""
    path, limit = _safe(req["path"]), req["max"]
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    try:
        st = os.fstat(fd)
        if not (st.st_mode & 0o170000 == 0o100000):  # S_ISREG
            if st.st_mode & 0o170000 == 0o040000:
                raise IsADirectoryError(f"{path} is a directory")
            raise NotRegularFile(f"{path} is not a regular file")
        if st.st_size > limit:
            raise FileTooLarge(f"{path} is {st.st_size} bytes, more than the {limit} allowed")
        os.set_blocking(fd, True)
        total = 0
        while True:
            chunk = os.read(fd, min(CHUNK, limit + 1 - total))
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise FileTooLarge(f"{path} grew past the {limit} bytes allowed while it was read")
            send({"id": _current_id[0], "event": "data", "base64": base64.b64encode(chunk).decode()})
            if total == limit:
                if os.read(fd, 1):
                    raise FileTooLarge(f"{path} grew past the {limit} bytes allowed while it was read")
                break
        return {"size": total}
    finally:
        os.close(fd)


# Time travel (internal/heavy/steps.go): before a step's checkpoint the host asks for a summary of the
# state, after a restore for fresh entropy (a restored copy must not repeat its parent's numbers).
INSPECT_VARS = 1000  # globals summarised, the first by name
INSPECT_REPR = 200  # characters of a repr
INSPECT_BUDGET = 2.0  # seconds for all reprs and sizes: they run the objects' own code
INSPECT_EACH = 0.25  # seconds for one variable's
INSPECT_DIRS = ("/home/user", "/tmp", "/data", "/output")  # the writable tmpfs dirs, in the image


class _OutOfTime(BaseException):  # not an Exception: reprlib and the guest's own code catch those
    pass


def _type_name(t):
    mod = getattr(t, "__module__", "") or ""
    name = getattr(t, "__qualname__", None) or t.__name__
    return name if mod == "builtins" else f"{mod.split('.')[0]}.{name}"


def _size(v):
    """An estimate of v's memory: numpy's and pandas' own counts, a container's items one level deep."""
    nbytes = getattr(v, "nbytes", None)
    if isinstance(nbytes, int) and type(v).__module__.startswith("numpy"):
        return nbytes + sys.getsizeof(v)
    usage = getattr(v, "memory_usage", None)
    if callable(usage) and type(v).__module__.startswith("pandas"):
        total = usage(index=True, deep=False)
        return int(getattr(total, "sum", lambda: total)())
    size = sys.getsizeof(v)
    if isinstance(v, (list, tuple, set, frozenset)):
        size += sum(sys.getsizeof(x) for _, x in zip(range(10000), v))
    elif isinstance(v, dict):
        size += sum(sys.getsizeof(k) + sys.getsizeof(x) for _, (k, x) in zip(range(10000), v.items()))
    return size


def _short_repr():
    """A reprlib.Repr that never builds the whole repr of a big buffer or container: reprlib slices
    str, list, dict... but reprs bytes, bytearray and subclasses of its types in full (a 150 MiB
    bytearray's is 600 MiB, which kills the worker of a sandbox near its memory limit)."""
    import reprlib

    class Short(reprlib.Repr):
        def repr_bytes(self, x, level):
            return builtins.repr(x[: self.maxstring]) + ("..." if len(x) > self.maxstring else "")

        repr_bytearray = repr_bytes

        def repr_instance(self, x, level):
            for t in (str, bytes, bytearray, list, tuple, dict, set, frozenset):
                if isinstance(x, t):
                    return getattr(self, "repr_" + t.__name__)(x, level)
            return super().repr_instance(x, level)

    short = Short()
    short.maxstring = short.maxother = INSPECT_REPR
    short.maxlong = 60
    return short


def _variables():
    import types

    short = _short_repr()

    def alarm(signum, frame):
        raise _OutOfTime()

    old = signal.signal(signal.SIGALRM, alarm)
    deadline = time.monotonic() + INSPECT_BUDGET
    out = []
    try:
        names = sorted(n for n in _main_globals if not (n.startswith("__") and n.endswith("__")))
        for name in names[:INSPECT_VARS]:
            v = _main_globals[name]
            if isinstance(v, types.ModuleType):
                kind = "module"
            elif isinstance(v, type):
                kind = "class"
            elif isinstance(v, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
                kind = "function"
            else:
                kind = "value"
            entry = {"name": name, "type": _type_name(type(v)), "kind": kind, "repr": "<not inspected: out of time>"}
            out.append(entry)
            left = deadline - time.monotonic()
            if left <= 0:
                continue
            try:
                signal.setitimer(signal.ITIMER_REAL, min(INSPECT_EACH, left))
                r = short.repr(v)[:INSPECT_REPR]
                size = _size(v) if kind == "value" else None
                signal.setitimer(signal.ITIMER_REAL, 0)
                entry["repr"] = r
                if size is not None:
                    entry["size"] = int(size)
            except _OutOfTime:
                pass
            except BaseException as e:  # noqa: BLE001 - the object's own code failed
                signal.setitimer(signal.ITIMER_REAL, 0)
                entry["repr"] = f"<repr failed: {type(e).__name__}>"
    except _OutOfTime:  # between two variables
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return out


def _file_tree():
    """Every entry under the writable dirs (no links followed), at most MAX_ENTRIES."""
    out = []
    for root in INSPECT_DIRS:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in dirnames + sorted(filenames):
                if len(out) >= MAX_ENTRIES:
                    return out
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                out.append({"name": name, "path": p, "size": st.st_size, "is_dir": name in dirnames and not os.path.islink(p), "mtime": st.st_mtime})
    return out


def inspect(req):
    if req.get("reseed"):
        _reseed()
    if not req.get("state"):
        return {}
    return {"variables": _variables(), "files": _file_tree(), "cwd": os.getcwd()}


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
        return read(req)
    if op == "list":
        d = _safe(req.get("dir") or "/")
        names = sorted(os.listdir(d))
        if len(names) > MAX_ENTRIES:
            raise FileTooLarge(f"{d} has {len(names)} entries, more than the {MAX_ENTRIES} a listing returns")
        out = []
        for name in names:
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
        files, omitted, total, more = {}, [], 0, 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                size = os.path.getsize(p)
                if size > max_file or total + size > max_total:
                    if len(omitted) < MAX_OMITTED:
                        omitted.append(p)
                    else:
                        more += 1
                    continue
                with open(p, "rb") as f:
                    data = f.read(max_file + 1)
                if len(data) > max_file or total + len(data) > max_total:  # it grew meanwhile
                    if len(omitted) < MAX_OMITTED:
                        omitted.append(p)
                    continue
                files[p] = base64.b64encode(data).decode()
                total += len(data)
        if more:
            omitted.append(f"... and {more} more")
        return {"files": files, "omitted": omitted}
    if op == "inspect":
        return inspect(req)
    if op == "env":
        os.environ.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
        return {}
    if op in _COMMAND_OPS:
        return _COMMAND_OPS[op](req)
    raise ValueError(f"unknown op {op!r}")


# ---------------------------------------------------------------------------------------------------
# Shell commands: children of the worker, each in a process group of its own (a timeout or kill stops
# what it started too), within the sandbox's limits like everything else. One reactor thread reads
# their output into per-stream buffers, writes their stdin and enforces their deadlines; requests
# read those buffers. exec answers at once; the host reads a command's output and end with cmd_read,
# so that no request waits on a command and the host can signal it meanwhile. A foreground command
# keeps at most max_output bytes per stream (past it the command is killed) and is forgotten once its
# end was read; a background command keeps the last max_output bytes of each stream (a ring: older
# output is dropped and truncated set) and stays listed.

MAX_COMMANDS = 64  # kept in the table; the oldest ended ones are forgotten first
MAX_STDIN = 1 << 20  # stdin not yet taken by a command
MAX_READ_TEXT = 256 << 10  # bytes of each stream per cmd_read answer: JSON may grow them 6-fold


class CommandEnded(Exception):
    """Input for a command that has already ended (the host answers 409 conflict)."""


class NoSuchProcess(Exception):
    pass


class _Stream:
    __slots__ = ("fd", "buf", "start")

    def __init__(self, fd):
        self.fd, self.buf, self.start = fd, bytearray(), 0  # start: offset of buf[0] in the stream

    def end(self):
        return self.start + len(self.buf)


class _Command:
    def __init__(self, proc, req, argv, fds, cap, ring, timeout):
        self.proc, self.pid = proc, proc.pid
        self.cmd, self.args = req.get("cmd"), list(req.get("args") or [])
        self.started, self.ended = time.time(), None
        self.deadline = time.monotonic() + timeout if timeout > 0 else None
        self.cap, self.ring = cap, ring
        self.stdin_fd = fds[0]
        self.streams = {"stdout": _Stream(fds[1]), "stderr": _Stream(fds[2])}
        self.pending, self.close_stdin = bytearray(), False
        self.state, self.exit_code, self.signal = "running", 0, ""
        self.truncated = self.timed_out = False


_cmds = {}  # pid -> _Command; guarded by _cmd_cv, as every _Command field is
_cmd_cv = threading.Condition()
_wake_fds = []  # the reactor's self-pipe, once it runs


def _wake():
    try:
        os.write(_wake_fds[1], b"x")
    except (BlockingIOError, IndexError):
        pass


def _reactor_start():
    if _wake_fds:
        return
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    _wake_fds.extend((r, w))
    try:
        threading.Thread(target=_react, daemon=True).start()
    except BaseException:  # at the process limit: the next command tries again
        del _wake_fds[:]
        os.close(r)
        os.close(w)
        raise


def _react():
    while True:
        try:
            _react_once(_wake_fds[0])
        except Exception as e:  # noqa: BLE001 - the reactor must outlive a fault, or every command hangs
            os.write(2, f"agentbox: command reactor: {e!r}\n".encode())
            time.sleep(0.01)


def _react_once(wake_r):
    """One round of the reactor: waits for the commands' pipes, then reads, writes and reaps."""
    with _cmd_cv:
        reads, writes, owner, running = [wake_r], [], {}, False
        for c in _cmds.values():
            for name, s in c.streams.items():
                if s.fd >= 0:
                    reads.append(s.fd)
                    owner[s.fd] = (c, name)
            if c.stdin_fd >= 0 and (c.pending or c.close_stdin):
                writes.append(c.stdin_fd)
                owner[c.stdin_fd] = (c, "stdin")
            running = running or c.state == "running"
    # Only this thread closes the commands' fds, so none of these is closed under select.
    r, w, _ = select.select(reads, writes, [], 0.02 if running else None)
    with _cmd_cv:
        if wake_r in r:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
        for fd in r:
            if fd in owner:
                _read_stream(*owner[fd])
        for fd in w:
            _flush_stdin(owner[fd][0])
        now = time.monotonic()
        for c in _cmds.values():
            if c.state == "running":
                _check(c, now)
        _cmd_cv.notify_all()


def _read_stream(c, name):
    s = c.streams[name]
    try:
        data = os.read(s.fd, 65536)
    except BlockingIOError:
        return False
    except OSError:
        data = b""
    if not data:
        os.close(s.fd)
        s.fd = -1
        return False
    if c.ring:
        s.buf += data
        if len(s.buf) > c.cap:
            drop = len(s.buf) - c.cap
            del s.buf[:drop]
            s.start += drop
            c.truncated = True
    else:
        room = c.cap - s.end()
        if len(data) > room:
            data = data[: max(room, 0)]
            c.truncated = True
            _signal_group(c, signal.SIGKILL)
        s.buf += data
    return True


def _flush_stdin(c):
    try:
        if c.pending:
            del c.pending[: os.write(c.stdin_fd, c.pending[: 1 << 16])]
    except BlockingIOError:
        return
    except OSError:  # the command closed its stdin or ended: what is left is dropped
        c.pending.clear()
        c.close_stdin = True
    if c.close_stdin and not c.pending:
        os.close(c.stdin_fd)
        c.stdin_fd = -1


def _signal_group(c, sig):
    try:
        os.killpg(c.pid, sig)
    except OSError:  # the group is gone already
        pass


def _check(c, now):
    if c.deadline is not None and now > c.deadline and not c.timed_out:
        c.timed_out = True
        _signal_group(c, signal.SIGKILL)
    rc = c.proc.poll()
    if rc is None:
        return
    # What it wrote before it exited; a process it left behind may hold the pipes, so no waiting.
    for name, s in c.streams.items():
        while s.fd >= 0 and _read_stream(c, name):
            pass
        if s.fd >= 0:
            os.close(s.fd)
            s.fd = -1
    if c.stdin_fd >= 0:
        os.close(c.stdin_fd)
        c.stdin_fd = -1
    c.pending.clear()
    c.ended = time.time()
    if rc < 0:
        c.exit_code = -1
        try:
            c.signal = signal.Signals(-rc).name
        except ValueError:
            c.signal = f"signal {-rc}"
        c.state = "timed_out" if c.timed_out else "killed"
    else:
        c.exit_code, c.state = rc, "timed_out" if c.timed_out else "exited"


def _utf8_end(buf, start, end):
    """The end (at most end) of the last complete UTF-8 sequence in buf[start:end]."""
    for i in range(1, min(4, end - start) + 1):
        b = buf[end - i]
        if b & 0xC0 == 0x80:
            continue
        need = 1 if b < 0x80 else 2 if b >> 5 == 6 else 3 if b >> 4 == 14 else 4 if b >> 3 == 30 else 1
        return end if i >= need else end - i
    return end


def _text(c, name, frm, limit):
    """Output of stream name from offset frm (or the oldest kept), at most limit bytes, cut at a
    character boundary while the command runs. Returns text, its end offset, whether output before
    it was dropped."""
    s = c.streams[name]
    start = max(frm, s.start)
    dropped = start > frm
    lo, hi = start - s.start, min(len(s.buf), start - s.start + limit)
    if dropped:
        while lo < hi and s.buf[lo] & 0xC0 == 0x80:  # the ring cut a character
            lo += 1
    if c.state == "running" or hi < len(s.buf):
        hi = _utf8_end(s.buf, lo, hi)
    return bytes(s.buf[lo:hi]).decode("utf-8", "replace"), s.start + hi, dropped


def _describe(c):
    end = c.ended if c.ended is not None else time.time()
    return {"pid": c.pid, "cmd": c.cmd, "args": c.args, "state": c.state, "exit_code": c.exit_code, "signal": c.signal,
            "truncated": c.truncated, "started": c.started, "duration_ms": (end - c.started) * 1000}


def _command(req):
    pid = req.get("pid")
    c = _cmds.get(pid)
    if c is None:
        raise NoSuchProcess(f"no command with pid {pid} in this session")
    return c


def _exec(req):
    cmd, args = req.get("cmd"), req.get("args") or []
    if not isinstance(cmd, str) or not cmd:
        raise ValueError("cmd is empty")
    argv = ["/bin/bash", "-c", cmd] if req.get("shell") else [cmd, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBOX_")}
    env.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
    background = bool(req.get("background"))
    stdin = (req.get("stdin") or "").encode()
    if len(stdin) > MAX_STDIN:
        raise ValueError(f"stdin is {len(stdin)} bytes, more than the {MAX_STDIN} a command takes at once")
    _reactor_start()
    with _cmd_cv:
        if background and sum(1 for c in _cmds.values() if c.ring) >= MAX_COMMANDS:
            ended = [c for c in _cmds.values() if c.ring and c.state != "running"]
            if not ended:
                raise OSError(f"{MAX_COMMANDS} background commands are running already")
            del _cmds[min(ended, key=lambda c: c.ended).pid]
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = subprocess.Popen(argv, stdin=in_r, stdout=out_w, stderr=err_w, cwd=req.get("cwd") or "/home/user", env=env,
                                start_new_session=True, close_fds=True)
    except BaseException:
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (in_r, out_w, err_w):
            os.close(fd)
    for fd in (in_w, out_r, err_r):
        os.set_blocking(fd, False)
    c = _Command(proc, req, argv, (in_w, out_r, err_r), int(req["max_output"]), background, float(req.get("timeout_ms") or 0) / 1000)
    c.pending += stdin
    c.close_stdin = not background
    with _cmd_cv:
        _cmds[c.pid] = c
    _wake()
    return _describe(c)


def _cmd_read(req):
    wait = max(0.0, min(float(req.get("wait_ms") or 0) / 1000, 10.0))
    deadline = time.monotonic() + wait
    with _cmd_cv:
        c = _command(req)
        frm = {"stdout": int(req.get("out_from") or 0), "stderr": int(req.get("err_from") or 0)}
        while True:
            chunks = {n: _text(c, n, frm[n], MAX_READ_TEXT) for n in frm}
            left = deadline - time.monotonic()
            if c.state != "running" or left <= 0 or any(ch[0] or ch[2] for ch in chunks.values()):
                break
            _cmd_cv.wait(left)
        out = _describe(c)
        out.update(stdout=chunks["stdout"][0], stderr=chunks["stderr"][0], out_end=chunks["stdout"][1], err_end=chunks["stderr"][1],
                   dropped=chunks["stdout"][2] or chunks["stderr"][2],
                   more=any(chunks[n][1] < c.streams[n].end() for n in frm))
        if not c.ring and c.state != "running" and not out["more"]:
            del _cmds[c.pid]  # a foreground command is forgotten once its end was read
        return out


def _cmd_input(req):
    data = (req.get("data") or "").encode()
    with _cmd_cv:
        c = _command(req)
        if c.state != "running":
            raise CommandEnded(f"command {c.pid} has ended ({c.state})")
        if c.stdin_fd < 0 or c.close_stdin:
            raise ValueError(f"the standard input of command {c.pid} is closed")
        if len(c.pending) + len(data) > MAX_STDIN:
            raise ValueError(f"command {c.pid} has not read the {len(c.pending)} bytes sent before; more than {MAX_STDIN} would wait")
        c.pending += data
        c.close_stdin = bool(req.get("close"))
    _wake()
    return {}


def _cmd_signal(req):
    name = req.get("signal") or "SIGKILL"
    sig = getattr(signal, name, None)
    if not name.startswith("SIG") or not isinstance(sig, signal.Signals):
        raise ValueError(f"unknown signal {name!r}")
    with _cmd_cv:
        c = _command(req)
        if c.state == "running":
            _signal_group(c, sig)
        return _describe(c)


def _cmd_list(req):
    with _cmd_cv:
        return {"commands": [_describe(c) for c in sorted(_cmds.values(), key=lambda c: c.started) if c.ring]}


_COMMAND_OPS = {"exec": _exec, "cmd_read": _cmd_read, "cmd_input": _cmd_input, "cmd_signal": _cmd_signal, "cmd_list": _cmd_list}


def worker_main(ctl_fd, res_fd):
    """The worker's life: requests from ctl_fd, answers to res_fd, until the supervisor closes ctl_fd."""
    global _res_fd, PROTO_IN, PROTO_OUT
    _res_fd = res_fd
    PROTO_IN = PROTO_OUT = None  # closed by the fork's caller
    _set_dumpable(True)  # for its own children; the supervisor stays out of reach
    os.dup2(_null, 0)
    for _fd, _name in ((1, "stdout"), (2, "stderr")):
        _r, _w = os.pipe()
        os.dup2(_w, _fd)
        os.close(_w)
        threading.Thread(target=_pump, args=(_r, _name, _fd), daemon=True).start()
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True)
    _reseed()
    requests = os.fdopen(ctl_fd, "rb")
    for line in requests:
        if not line.strip():
            continue
        req = {}
        try:
            req = json.loads(line)
            _current_id[0] = req.get("id", 0)
            answer = json.dumps({"id": req.get("id", 0), "event": "result", **handle(req)})
            if len(answer) > req.get("max_line", len(answer)):
                raise FileTooLarge(f"the answer is {len(answer)} bytes, more than the {req['max_line']} a {req.get('op')} may send")
            with _send_lock:
                _write_all(_res_fd, (answer + "\n").encode())
        except Exception as e:  # noqa: BLE001 - reported to the host, the worker goes on
            send({"id": req.get("id", 0), "event": "failed", "type": type(e).__name__[:200], "message": _clip(str(e))})
    os._exit(0)


# ---------------------------------------------------------------------------------------------------
# The supervisor.

def proto_send(msg):
    _write_all(PROTO_OUT, (json.dumps(msg) + "\n").encode())


class Worker:
    def __init__(self):
        ctl_r, ctl_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (PROTO_IN, PROTO_OUT, ctl_w, res_r):
                    os.close(fd)
                worker_main(ctl_r, res_w)
            finally:
                os._exit(70)
        os.close(ctl_r)
        os.close(res_w)
        os.set_blocking(ctl_w, False)
        self.pid, self.ctl, self.res, self.status = pid, ctl_w, res_r, None

    def close(self):
        """Kills the worker and everything it started (every process but this one)."""
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
        for fd in (self.ctl, self.res):
            try:
                os.close(fd)
            except OSError:
                pass
        while self.status is None:
            _reap(self, block=True)


def _reap(w, block=False):
    """Collects exited children (orphans are reparented to this PID 1); notes the worker's status."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            if w is not None and w.status is None:
                w.status = 0
            return
        if pid == 0:
            return
        if w is not None and pid == w.pid:
            w.status = status
            if block:
                return


def _count_procs():
    try:
        return sum(1 for n in os.listdir("/proc") if n.isdigit()) - 1  # not this supervisor
    except OSError:
        return 0


def _death(w, op):
    if os.WIFSIGNALED(w.status):
        code, how = 128 + os.WTERMSIG(w.status), f"was killed by signal {os.WTERMSIG(w.status)}"
    else:
        code, how = os.WEXITSTATUS(w.status) if os.WIFEXITED(w.status) else 1, f"exited with status {os.waitstatus_to_exitcode(w.status)}"
    msg = f"the program's process {how} before it reported a result"
    if op == "run":
        return {"event": "result", "exit_code": code, "error": {"type": "GuestCrash", "message": msg},
                "has_output": bool(_listdir("/output"))}
    return {"event": "failed", "type": "GuestCrash", "message": msg}


def _listdir(d):
    try:
        return os.listdir(d)
    except OSError:
        return []


def _violation(w, op, why):
    w.close()
    msg = f"the program broke the agent's result channel ({why}); it was stopped"
    if op == "run":
        return {"event": "result", "exit_code": 1, "error": {"type": "GuestCrash", "message": msg}, "has_output": False}
    return {"event": "failed", "type": "GuestCrash", "message": msg}


def relay(w, head, body):
    """Gives the worker one request and forwards its answers to the host until the result. Returns
    whether the worker is still usable."""
    rid, op, max_line = head["id"], head.get("op"), int(head.get("max_line") or (1 << 20))
    pending = bytearray(body)
    buf = bytearray()
    scanned = 0  # bytes of buf known to hold no newline
    reported = PROCS_REPORT - 1
    _reap(w)  # orphans that exited since the last request (a killed command's) hold process slots
    while True:
        try:
            r, wr, _ = select.select([w.res], [w.ctl] if pending else [], [], 0.02)
        except InterruptedError:
            continue
        if wr:
            try:
                del pending[: os.write(w.ctl, pending[: 1 << 16])]
            except BlockingIOError:
                pass
            except OSError:
                pending.clear()  # the worker is gone: noticed below
        chunk = b""
        if r:
            chunk = os.read(w.res, 1 << 16)
            buf += chunk
            while True:
                i = buf.find(b"\n", scanned)
                scanned = len(buf) if i < 0 else 0
                if i < 0 and len(buf) > max_line or i > max_line:
                    proto_send({"id": rid, **_violation(w, op, f"a line longer than {max_line} bytes")})
                    return False
                if i < 0:
                    break
                line = bytes(buf[:i])
                del buf[: i + 1]
                try:
                    msg = json.loads(line)
                    if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
                        raise ValueError("not an event")
                except ValueError:
                    proto_send({"id": rid, **_violation(w, op, f"an unreadable line {line[:80]!r}")})
                    return False
                if msg.get("id") != rid:
                    continue  # the answer of an earlier request, or a forgery
                msg["id"] = rid
                out = json.dumps(msg)
                if len(out) > max_line:
                    proto_send({"id": rid, **_violation(w, op, f"a line longer than {max_line} bytes")})
                    return False
                _write_all(PROTO_OUT, (out + "\n").encode())
                if msg["event"] in ("result", "failed"):
                    return True
        if not r or not chunk:
            n = _count_procs()
            if n > reported:
                reported = n
                proto_send({"id": rid, "event": "procs", "count": n})
            _reap(w)
            for _ in range(100 if r and w.status is None else 0):  # EOF: it is exiting, or closed its end
                time.sleep(0.01)
                _reap(w)
                if w.status is not None:
                    break
            if w.status is not None:
                proto_send({"id": rid, **_death(w, op)})
                w.close()
                return False
            if r:
                proto_send({"id": rid, **_violation(w, op, "it closed its end")})
                return False


def main():
    proto_send({"event": "ready", "pid": os.getpid()})
    requests = os.fdopen(PROTO_IN, "rb")
    w = None
    while True:
        head = requests.readline()
        if not head:
            break
        if not head.strip():
            continue
        body = requests.readline()
        head = json.loads(head)
        if w is None:
            w = Worker()
        if not relay(w, head, body):
            w = None
    if w is not None:
        w.close()


main()
