# The nano tier's in-guest runner. agentbox_init (build/pywasm/embed.c) executes this once, before the
# memory snapshot is taken; every sandbox then calls run() through agentbox_exec.
#
# run(request: bytes) -> bytes takes and returns JSON:
#   request: {"code": str, "filename": str, "fresh": bool, "allowed": [str] | null, "argv": [str],
#             "network": bool (HTTP goes to the host bridge; false: offline),
#             "repl": bool, "svg": bool, "frame": str}
# Rich outputs (display(), a final expression's value under "repl") are written to fd 1 as they happen,
# each in one write of `frame` (a fresh marker per run, from the host) followed by the output's JSON:
# the host takes them out of stdout there, so they stay in order with what the program printed.
#   reply:   {"exit_code": int, "error": null | {"type": str, "message": str, "traceback": str},
#             "missing": null | {"module": str, "feature": str}}
# "missing" says what the program failed for want of (see _missing): the router's fallback to the
# heavy tier decides on it, not on the error's text.
import _agentbox_outputs as outputs  # internal/outputs/outputs.py, loaded ahead of this file
import builtins
import errno
import gc
import importlib
import json
import linecache
import os
import sys
import traceback

# Imported now so that they are in the snapshot and cost nothing at run time.
import base64, bisect, calendar, collections, contextlib, copy, csv, dataclasses, datetime  # noqa: E401,F401
import decimal, enum, fractions, functools, hashlib, heapq, io, itertools, math, operator  # noqa: E401,F401
import pathlib, pprint, random, re, statistics, string, struct, textwrap, time, typing, uuid  # noqa: E401,F401
import abc, array, codecs, difflib, glob, numbers, shutil, tempfile, types, weakref, zlib  # noqa: E401,F401
import collections.abc, json.decoder, json.encoder, urllib.parse  # noqa: E401,F401

_STDLIB = "/usr/local/lib/python3.11/"

# Like `python3 -c`: the working directory is the first place imports look.
os.chdir("/home/user")
sys.path.insert(0, "")

# Modules this tier cannot provide: the feature they need, and why; importing them says so instead of a
# bare "No module named".
_UNAVAILABLE = {
    "ssl": ("tls", "TLS and sockets are not available in the nano tier"),
    "_ssl": ("tls", "TLS and sockets are not available in the nano tier"),
    "ctypes": ("native code", "native code (ctypes) is not available in the nano tier"),
    "_ctypes": ("native code", "native code (ctypes) is not available in the nano tier"),
    "multiprocessing": ("processes", "processes are not available in the nano tier"),
    "_multiprocessing": ("processes", "processes are not available in the nano tier"),
    "_posixsubprocess": ("processes", "subprocesses are not available in the nano tier"),
    "concurrent.futures.process": ("processes", "processes are not available in the nano tier"),
}

# The attribute that marks an exception the nano tier raised for a feature it lacks by design.
_FEATURE_ATTR = "_agentbox_missing_feature"


def _lacking(exc, feature):
    setattr(exc, _FEATURE_ATTR, feature)
    return exc


class _UnavailableFinder:
    """A meta-path finder, first in line, that refuses the modules in _UNAVAILABLE with a clear message."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        entry = _UNAVAILABLE.get(name)
        if entry is not None:
            feature, why = entry
            raise _lacking(
                ModuleNotFoundError(f"No module named {name!r}: {why} (WebAssembly sandbox); use tier 'heavy'", name=name),
                feature,
            )
        return None

    @staticmethod
    def invalidate_caches():
        pass


sys.meta_path.insert(0, _UnavailableFinder)

import _thread  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402


def _no_threads(*args, **kwargs):
    raise _lacking(
        RuntimeError("can't start new thread: threads are not available in the nano tier (WebAssembly sandbox); use tier 'heavy'"),
        "threads",
    )


def _no_network(*args, **kwargs):
    raise _lacking(OSError(101, "network access is not available in the nano tier (WebAssembly sandbox without sockets)"), "network")


_thread.start_new_thread = _no_threads
threading._start_new_thread = _no_threads
socket.getaddrinfo = _no_network
socket.create_connection = _no_network
socket.socket.connect = _no_network
socket.socket.connect_ex = _no_network
socket.socket.bind = _no_network

# --- The HTTP bridge (docs/egress-nano.md) ---------------------------------------------------------------
# There are no sockets here: http.client's connections, and so urllib.request's (HTTPS included), keep
# what they send and, when the response is first read, hand the request to the host through the device
# below; the host sends it under the run's network policy, doing TLS itself, and returns the response.
# A run without a network policy gets the sockets' offline error. The host enforces everything (caps,
# policy, deadline): this side only shapes requests and errors as CPython's would be.
import http.client  # noqa: E402
import urllib.error  # noqa: E402

_BRIDGE = "/dev/agentbox/http"
_BRIDGE_READ = 256 << 10
_net = {"on": False}  # set by run() from the request's "network"


class _BridgeConnectError(ConnectionError):
    """The host could not get a response (no such host, refused, reset): urllib raises it as URLError."""


def _ascii_host(host):
    try:
        return host.encode("ascii").decode()
    except UnicodeError:
        return host.encode("idna").decode()


def _bridge_exchange(scheme, host, port, timeout, raw):
    """Sends one raw HTTP/1.1 request to scheme://host:port through the host; returns the raw response."""
    if not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        timeout = 0  # socket._GLOBAL_DEFAULT_TIMEOUT, None or inf: the run's deadline bounds it
    meta = json.dumps({"scheme": scheme, "host": _ascii_host(host), "port": port, "timeout": timeout}).encode()
    fd = os.open(_BRIDGE, os.O_RDWR)
    try:
        view = memoryview(meta + b"\n" + raw)
        while view:
            view = view[os.write(fd, view):]
        del view
        chunks = []
        while True:
            chunk = os.read(fd, _BRIDGE_READ)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    head, _, response = b"".join(chunks).partition(b"\n")
    status = json.loads(head)
    message = status.get("error")
    if message:
        kind = status.get("kind")
        if kind == "timeout":
            raise TimeoutError(message)
        if kind == "too_large":
            raise OSError(errno.EFBIG, message)
        if kind == "offline":
            raise OSError(errno.ENETUNREACH, message)
        if kind == "invalid":
            raise OSError(errno.EINVAL, message)
        raise _BridgeConnectError(errno.ECONNABORTED, message)
    return response


class _BridgeSocket:
    """HTTPConnection.sock in this tier: sendall keeps the request, makefile sends it and reads the response."""

    def __init__(self, scheme, host, port, timeout):
        self._dest = (scheme, host, port)
        self._timeout = timeout
        self._out = []
        self._response = None

    def sendall(self, data):
        if self._response is not None:
            raise OSError(errno.EPIPE, "the request on this connection was already sent")
        self._out.append(bytes(data))

    def send(self, data):
        data = bytes(data)
        self.sendall(data)
        return len(data)

    def makefile(self, mode="r", buffering=None, **kwargs):
        if self._response is None:
            raw, self._out = b"".join(self._out), []
            self._response = _bridge_exchange(*self._dest, self._timeout, raw)
        return io.BufferedReader(io.BytesIO(self._response))

    def settimeout(self, timeout):
        self._timeout = timeout

    def gettimeout(self):
        return self._timeout

    def setsockopt(self, *args):
        pass

    def close(self):
        self._out = []


def _bridged_connect(self):
    sys.audit("http.client.connect", self, self.host, self.port)
    if not _net["on"]:
        _no_network()
    if self._tunnel_host:
        raise OSError(errno.EOPNOTSUPP, "proxy tunnels (CONNECT) are not used in the nano tier: the host sends each request itself")
    self.sock = _BridgeSocket(self._bridge_scheme, self.host, self.port, self.timeout)


http.client.HTTPConnection._bridge_scheme = "http"
http.client.HTTPConnection.connect = _bridged_connect


class HTTPSConnection(http.client.HTTPConnection):
    """http.client.HTTPSConnection of the nano tier: the host makes the TLS connection and verifies the
    server's certificate, so there is no ssl context; client certificates are not available."""

    default_port = http.client.HTTPS_PORT
    _bridge_scheme = "https"

    def __init__(self, host, port=None, key_file=None, cert_file=None, timeout=socket._GLOBAL_DEFAULT_TIMEOUT,
                 source_address=None, *, context=None, check_hostname=None, blocksize=8192):
        super().__init__(host, port, timeout, source_address, blocksize=blocksize)
        if key_file is not None or cert_file is not None:
            raise ValueError("client certificates are not available in the nano tier (the host makes the TLS connection)")
        self.key_file = self.cert_file = None
        self._context = context


HTTPSConnection.__module__ = "http.client"
http.client.HTTPSConnection = HTTPSConnection
http.client.__all__.append("HTTPSConnection")

import urllib.request  # noqa: E402  (after HTTPSConnection: it defines HTTPSHandler only if there is one)

_do_open = urllib.request.AbstractHTTPHandler.do_open


def _bridged_do_open(self, http_class, req, **kwargs):
    try:
        return _do_open(self, http_class, req, **kwargs)
    except _BridgeConnectError as e:
        raise urllib.error.URLError(e) from None  # where a socket's connect error would surface


urllib.request.AbstractHTTPHandler.do_open = _bridged_do_open

_Response = collections.namedtuple("Response", "status headers body")
_Response.__module__ = "agentbox.http"


def _http_request(method, url, headers=None, body=None, timeout=None):
    """Sends one HTTP request through the host, under this run's network policy.

    Returns Response(status, headers, body): the status code, a dict of lower-case header names (repeated
    headers joined with ", ") and the body as bytes. A request the policy refuses is a response too (403
    or 451, the body naming the rule); OSError means no response (no policy, no such host, too large),
    TimeoutError that timeout seconds passed. body may be bytes or str (sent as UTF-8).
    """
    if not _net["on"]:
        raise OSError(errno.ENETUNREACH, "network access is not available: this run has no network policy")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"agentbox.http: {url!r} is not an http:// or https:// URL")
    cls = HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=socket._GLOBAL_DEFAULT_TIMEOUT if timeout is None else timeout)
    target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    if isinstance(body, str):
        body = body.encode()
    try:
        conn.request(method.upper(), target, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        merged = {}
        for name, value in resp.getheaders():
            name = name.lower()
            merged[name] = merged[name] + ", " + value if name in merged else value
        return _Response(resp.status, merged, data)
    finally:
        conn.close()


_http_request.__module__ = "agentbox.http"
_http_request.__name__ = _http_request.__qualname__ = "request"
_agentbox = types.ModuleType("agentbox", "Host services of agentbox's nano tier.")
_agentbox.__path__ = []
_agentbox_http = types.ModuleType("agentbox.http", "HTTP through the host, under the run's network policy (docs/egress-nano.md).")
_agentbox_http.request = _http_request
_agentbox_http.Response = _Response
_agentbox.http = _agentbox_http
sys.modules["agentbox"] = _agentbox
sys.modules["agentbox.http"] = _agentbox_http


def _warm_bridge():
    """Runs urllib, http.client and agentbox.http once against a canned response, before the snapshot,
    so that a program's first request does not pay for building the opener and first-use set-up of
    the code it runs (about 4 ms of a 5 ms first request)."""
    global _bridge_exchange
    real = _bridge_exchange
    _bridge_exchange = lambda *args: b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    _net["on"] = True
    try:
        for _ in range(2):
            urllib.request.urlopen("https://warm-up.invalid/").read()
            urllib.request.urlopen(urllib.request.Request("http://warm-up.invalid/", data=b"x")).read()
            _http_request("GET", "https://warm-up.invalid/")
    finally:
        _bridge_exchange = real
        _net["on"] = False


_warm_bridge()

_RUNNER_GLOBALS = globals()
_allowed = None  # frozenset of top-level names, or None for no restriction
_real_import = builtins.__import__
_real_import_module = importlib.import_module


def _from_user_code(depth):
    """True when the frame `depth` levels up is not standard-library code."""
    try:
        g = sys._getframe(depth + 1).f_globals
    except ValueError:
        return True
    if g is _RUNNER_GLOBALS:
        return False
    f = g.get("__file__") or ""
    if f.startswith(_STDLIB):
        return False
    spec = g.get("__spec__")
    return getattr(spec, "origin", None) not in ("frozen", "built-in")


def _check_allowed(name):
    top = name.partition(".")[0]
    if top not in _allowed:
        raise ImportError(
            f"import of {top!r} is not allowed in this sandbox (allowed_modules: {', '.join(sorted(_allowed)) or 'none'})",
            name=top,
        )


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    if _allowed is not None and level == 0 and _from_user_code(1):
        _check_allowed(name)
    return _real_import(name, globals, locals, fromlist, level)


def _guarded_import_module(name, package=None):
    if _allowed is not None and not name.startswith(".") and _from_user_code(1):
        _check_allowed(name)
    return _real_import_module(name, package)


builtins.__import__ = _guarded_import
importlib.import_module = _guarded_import_module


def _exit_code(code):
    if code is None:
        return 0
    if isinstance(code, bool):
        return int(code)
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _user_tb(tb):
    """Drops the runner's own frames from the front of a traceback."""
    while tb is not None and tb.tb_frame.f_code.co_filename == "<agentbox-runner>":
        tb = tb.tb_next
    return tb


def _hide_runner_frames(te, seen=None):
    """Drops the runner's own frames (the import guard) from a traceback and its chained ones."""
    seen = seen if seen is not None else set()
    while te is not None and id(te) not in seen:
        seen.add(id(te))
        te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename != "<agentbox-runner>"])
        if te.__cause__ is not None:
            _hide_runner_frames(te.__cause__, seen)
        te = te.__context__


def _missing(exc):
    """What the program failed for want of: {"module", "feature"} or None.

    module is the top-level module a ModuleNotFoundError names (the router knows whether heavy has it);
    feature is set for what this tier lacks by design: the errors raised above, and subprocess.Popen,
    which refuses on WASI before doing anything (recognised by its code object, not its message).
    """
    feature = getattr(exc, _FEATURE_ATTR, None)
    if not isinstance(feature, str):
        feature = ""
    if not feature and isinstance(exc, OSError) and exc.errno == errno.ENOTSUP:
        popen = getattr(sys.modules.get("subprocess"), "Popen", None)
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if popen is not None and tb is not None and tb.tb_frame.f_code is getattr(popen.__init__, "__code__", None):
            feature = "processes"
    module = ""
    if isinstance(exc, ModuleNotFoundError) and isinstance(exc.name, str):
        module = exc.name.partition(".")[0]
    if not feature and not module:
        return None
    return {"module": module, "feature": feature}


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


import __main__  # noqa: E402


builtins.display = outputs.display
_frame = b""


def _emit(output):
    _flush()
    data = _frame + outputs.encode(output).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def _execute(code, filename, repl):
    g = __main__.__dict__
    g["__file__"] = filename
    g["__name__"] = "__main__"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    outputs.run(code, filename, g, repl)


# --- Time travel (docs/time-travel-nano.md) -------------------------------------------------------------
# The host calls run() with {"op": ...} between cells: "probe" before it snapshots the session, "restored"
# right after it restored one. Neither runs the program's own code: reprs and sizes are taken only of
# built-in types, everything else is described by its type, so a probe cannot loop, raise or change state
# through a user-defined __repr__, __sizeof__ or __class__.
_PROBE_NAMES = 200  # globals described per snapshot, the first in name order
_REPR_MAX = 200
_REPR_NODES = 5000  # values described per probe in all; nested ones past it show as "..."
_SIZE_ITEMS = 32  # items of a container sized one by one; the rest are estimated from them
_SIZE_BUDGET = 2000  # items sized per probe in all, bounding its cost (~4 µs an item)
_FD_GAP = 16  # free descriptors in a row after which the probe stops looking for open ones
_STALE = "/dev/agentbox/stale"
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement
_type_name_of = type.__dict__["__qualname__"].__get__
_type_module_of = type.__dict__["__module__"].__get__
_module_dict = types.ModuleType.__dict__["__dict__"].__get__
_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.BuiltinMethodType,
              types.MethodWrapperType, types.WrapperDescriptorType, types.MethodDescriptorType, functools.partial)
_NAMED_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType)
_CONTAINERS = (list, tuple, set, frozenset, dict)


def _type_name(t):
    try:
        name, module = _type_name_of(t), _type_module_of(t)
    except Exception:
        return "?"
    return name if module == "builtins" or not isinstance(module, str) else module + "." + name


def _clip(text, limit):
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def _safe_repr(v, limit, nodes, depth=0):
    """A repr of at most about limit characters; nodes[0] is the values left to describe in this
    probe, so that nested containers cannot make it long."""
    nodes[0] -= 1
    t = type(v)
    if t is int:
        return repr(v) if v.bit_length() <= 640 else f"<int of {v.bit_length()} bits>"
    if t in (float, complex, bool, type(None)):
        return repr(v)
    if t in (str, bytes, bytearray):
        return _clip(repr(v[: limit + 1]), limit)
    if t in _CONTAINERS:
        if t is dict:
            opening, closing, items = "{", "}", v.items()
        else:
            opening, closing = {list: "[]", tuple: "()", set: "{}", frozenset: "{}"}[t]
            items = v
        if not v:
            return {list: "[]", tuple: "()", set: "set()", frozenset: "frozenset()", dict: "{}"}[t]
        if depth >= 3 or nodes[0] <= 0:
            return opening + "..." + closing
        parts, used = [], 2
        for item in items:
            if used >= limit:
                parts.append("...")
                break
            if t is dict:
                k, val = item
                text = _safe_repr(k, limit - used, nodes, depth + 1) + ": " + _safe_repr(val, limit - used, nodes, depth + 1)
            else:
                text = _safe_repr(item, limit - used, nodes, depth + 1)
            parts.append(text)
            used += len(text) + 2
        if t is tuple and len(v) == 1:
            parts.append("")
        return _clip(opening + ", ".join(parts) + closing, limit)
    if issubclass(t, types.ModuleType):
        try:
            return f"<module {_module_dict(v).get('__name__')!r}>"
        except Exception:
            return "<module>"
    if issubclass(t, type):
        return f"<class {_type_name(v)!r}>"
    if t is types.MethodType:
        v, t = types.MethodType.__dict__["__func__"].__get__(v), type(types.MethodType.__dict__["__func__"].__get__(v))
    if t in _NAMED_FUNCTIONS:
        try:
            return f"<function {t.__dict__['__qualname__'].__get__(v)}>"
        except Exception:
            pass
    return f"<{_type_name(t)} object>"


def _size_of(v):
    t = type(v)
    if t.__flags__ & _HEAPTYPE:
        return object.__sizeof__(v) + (16 if gc.is_tracked(v) else 0)
    return sys.getsizeof(v)


def _estimate_size(v, budget):
    """sys.getsizeof of v plus, for built-in containers, of their items (the first few, the rest
    estimated from them): an estimate, not a deep measure. budget[0] is the items left to size."""
    size = _size_of(v)
    t = type(v)
    if t in _CONTAINERS and v and budget[0] > 0:
        items = v.items() if t is dict else v
        n, part, most = 0, 0, min(_SIZE_ITEMS, budget[0])
        for item in items:
            if n >= most:
                break
            part += _size_of(item[0]) + _size_of(item[1]) if t is dict else _size_of(item)
            n += 1
        budget[0] -= n
        size += part * len(v) // n
    return size


def _kind(v):
    t = type(v)
    if issubclass(t, types.ModuleType):
        return "module"
    if issubclass(t, type):
        return "class"
    if issubclass(t, _FUNCTIONS):
        return "function"
    return "value"


def _variables():
    g = __main__.__dict__
    names = heapq.nsmallest(_PROBE_NAMES, (k for k in g if type(k) is str and not (k.startswith("__") and k.endswith("__"))))
    out, budget, nodes = [], [_SIZE_BUDGET], [_REPR_NODES]
    for name in names:
        v = g[name]
        kind = _kind(v)
        entry = {"name": name, "type": _type_name(type(v)), "kind": kind}
        try:
            entry["repr"] = _clip(_safe_repr(v, _REPR_MAX, nodes), _REPR_MAX)
        except Exception as e:  # e.g. MemoryError; a probe never fails for one value
            entry["repr"] = f"<unrepresentable: {type(e).__name__}>"
        if kind in ("value", "class"):
            try:
                entry["size"] = _estimate_size(v, budget)
            except Exception:
                pass
        out.append(entry)
    return out


def _open_fds():
    """The descriptors above the standard streams and the preopened root (fd 3) that are open: each is
    host state a restored interpreter would not have."""
    fds, gap, fd = [], 0, 4
    while gap < _FD_GAP:
        try:
            os.fstat(fd)
        except OSError:
            gap += 1
        else:
            fds.append(fd)
            gap = 0
        fd += 1
    return fds


def _probe(req):
    return {"variables": _variables(), "fds": _open_fds(), "cwd": os.getcwd()}


def _restored(req):
    """Right after a restore: the descriptors that were open at the snapshot are taken by handles on the
    stale device, so that the program's old file objects fail with EBADF instead of reaching whatever
    file would next get their number. (Entropy is renewed by the first run's "fresh".)"""
    want = set(req.get("fds") or ())
    if want:
        top, held = max(want), []
        for _ in range(top):
            fd = os.open(_STALE, os.O_RDONLY)
            held.append(fd)
            if fd >= top:
                break
        for fd in held:
            if fd not in want:
                os.close(fd)
    return {"cwd": os.getcwd()}


_OPS = {"probe": _probe, "restored": _restored}


# The request is read by the C scanner json.loads ends in, without loads' own steps (type checks,
# encoding detection, a regex for whitespace): a third of a print(1) run's JSON cost. Anything it does
# not take whole goes to json.loads, which says what is wrong.
_scan_once = json.JSONDecoder().scan_once
# The reply of a run that ended well, as json.dumps would write it; the host compares it whole.
_REPLY_OK = json.dumps({"exit_code": 0, "error": None, "missing": None}).encode()


def _parse(request):
    text = request.decode()
    try:
        req, end = _scan_once(text, 0)
    except StopIteration:
        req, end = None, -1
    if end != len(text) or type(req) is not dict:
        req = json.loads(text)
    return req


def run(request):
    global _allowed, _frame
    req = _parse(request)
    op = req.get("op")
    if op:
        try:
            return json.dumps({"ok": _OPS[op](req)}).encode()
        except BaseException as e:  # noqa: B036 - the host reports it
            return json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
    _frame = req.get("frame", "").encode()
    outputs.begin(_emit, svg=req.get("svg"))
    if req.get("fresh"):
        # The snapshot's random state is shared by every sandbox started from it, and a restored
        # session's by every rewind and fork of that step.
        random.seed()
        tempfile._name_sequence = None
        np = sys.modules.get("numpy")
        if np is not None:
            try:
                np.random.seed()
            except Exception:
                pass
    allowed = req.get("allowed")
    _allowed = frozenset(allowed) if allowed else None
    _net["on"] = bool(req.get("network"))
    sys.argv = req.get("argv") or [req["filename"]]
    env = req.get("env")
    if env:
        os.environ.update(env)
    exit_code, error, missing = 0, None, None
    try:
        _execute(req["code"], req["filename"], req.get("repl", False))
    except SystemExit as e:
        exit_code = _exit_code(e.code)
    except BaseException as e:  # noqa: B036 - everything the program raises is reported
        exit_code = 1
        try:
            missing = _missing(e)
        except Exception:
            pass
        try:
            te = traceback.TracebackException(type(e), e, _user_tb(e.__traceback__))
            _hide_runner_frames(te)
            text = "".join(te.format())
            try:
                sys.stderr.write(text)
            except Exception:
                pass
            error = {"type": type(e).__name__, "message": str(e), "traceback": text}
        except BaseException as fmt_err:  # noqa: B036 - e.g. MemoryError while formatting
            error = {"type": type(e).__name__, "message": f"(could not format: {type(fmt_err).__name__})", "traceback": ""}
    _flush()
    if exit_code == 0 and error is None and missing is None:
        return _REPLY_OK
    return json.dumps({"exit_code": exit_code, "error": error, "missing": missing}).encode()


# Objects made so far live as long as the interpreter: keep the collector from scanning them (and from
# writing to their pages, which would copy them out of the shared snapshot).
gc.collect()
gc.freeze()
