"""The agentbox HTTP client: Sandbox, its configuration and results, and typed errors."""

from __future__ import annotations

import base64
import collections
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Union

from ._binary import bundled_binary

__all__ = [
    "AgentboxError",
    "ConflictError",
    "ExecutionError",
    "ForbiddenError",
    "InvalidArgumentError",
    "NotFoundError",
    "Output",
    "OverloadedError",
    "Sandbox",
    "SandboxConfig",
    "SandboxResult",
    "UnauthenticatedError",
]

OutputCallback = Callable[[str], None]
# Called with (from_tier, reason) when a nano run failed for want of the heavy tier and starts again there.
FallbackCallback = Callable[[str, str], None]
# Called with each rich output (Output) as the program makes it, in order with stdout and stderr.
OutputsCallback = Callable[["Output"], None]


class AgentboxError(Exception):
    """An error answer from the server (or a failure to reach it)."""

    def __init__(self, message: str, *, status: int = 0, code: str = "", request_id: str = "",
                 retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.status:
            return f"{self.message} ({self.status} {self.code}, request {self.request_id})"
        return self.message


class InvalidArgumentError(AgentboxError):
    """The request was invalid (400)."""


class UnauthenticatedError(AgentboxError):
    """The API key was missing or wrong (401)."""


class ForbiddenError(AgentboxError):
    """The server refused the request whoever sent it (403): a browser's cross-origin write, or a
    server without API keys addressed by a name other than localhost's."""


class NotFoundError(AgentboxError):
    """The session or file does not exist, or the session has ended (404)."""


class ConflictError(AgentboxError):
    """The session is busy with another request (409)."""


class OverloadedError(AgentboxError):
    """The server is at capacity, or this API key is past its share, its session limit or the
    memory budget (the message says which); retry after ``retry_after`` seconds (429)."""


_ERRORS = {
    "invalid_argument": InvalidArgumentError,
    "too_large": InvalidArgumentError,
    "unauthenticated": UnauthenticatedError,
    "forbidden": ForbiddenError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "overloaded": OverloadedError,
}


@dataclass
class SandboxConfig:
    """Limits and placement of a sandbox. ``None`` means the server's default."""

    timeout_ms: Optional[int] = None
    memory_limit_mb: Optional[int] = None
    allowed_modules: Optional[List[str]] = None
    runtime: str = "auto"  # "auto" | "nano" | "heavy"
    packages: List[str] = field(default_factory=list)
    max_output_bytes: Optional[int] = None
    ttl_s: Optional[int] = None
    # The network the sandbox may use, as the HTTP API's NetworkPolicy: {"allow": ["pypi.org",
    # {"host": "api.example.com", "methods": ["GET"], "paths": ["/v1/"]}], "deny": [...], "dlp":
    # "redact", "inspect_tls": True, "secrets": [...]}. None is offline. It must stay inside the
    # server's ceiling (ForbiddenError names the rule that refused it). See docs/egress.md.
    network: Optional[Dict[str, Any]] = None
    # The trusted task text (http(s) URLs in it are granted read-only) and what it needs:
    # {"packages": [...], "urls": [...], "git": [...]}.
    task: Optional[str] = None
    intent: Optional[Dict[str, List[str]]] = None
    # Caps of rich outputs: one output, and all of a run's (docs/results.md).
    max_result_bytes: Optional[int] = None
    max_results_bytes: Optional[int] = None
    # Add image/svg+xml to every matplotlib figure, next to image/png.
    figure_svg: Optional[bool] = None
    # Added to the environment (os.environ) of the sandbox's code and shell commands; the sandbox
    # never sees the host's.
    env: Optional[Dict[str, str]] = None

    def _limits(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for key in ("timeout_ms", "memory_limit_mb", "allowed_modules", "max_output_bytes",
                    "network", "task", "intent",
                    "max_result_bytes", "max_results_bytes", "figure_svg", "env"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.runtime not in ("auto", "nano", "heavy"):
            raise ValueError(f"runtime must be 'auto', 'nano' or 'heavy', not {self.runtime!r}")
        out["tier"] = self.runtime
        if self.packages:
            out["packages"] = list(self.packages)
        return out


@dataclass
class ExecutionError:
    """Why a program did not finish normally: a Python exception class name, or one of Timeout,
    MemoryLimitExceeded, OutputLimitExceeded, GuestCrash, SandboxError."""

    type: str
    message: str
    traceback: str = ""


_BINARY = ("image/png", "image/jpeg", "application/pdf")


class Output:
    """One rich output of a run, Jupyter-style: the value of the final expression (``is_main_result``)
    or something displayed (``display()``, a matplotlib figure), as representations by MIME type.

    ``data`` holds them as the server sent them (base64 text for images and PDF); the properties
    decode. In Jupyter, ``display(output)`` (or an output as a cell's value) shows it as the sandbox
    made it: a chart inline, a DataFrame as its table."""

    CHART = "application/vnd.agentbox.chart+json"
    TABLE = "application/vnd.dataresource+json"
    PLOTLY = "application/vnd.plotly.v1+json"

    def __init__(self, type: str, data: Dict[str, Any], metadata: Optional[Dict[str, Any]] = None,
                 is_main_result: bool = False) -> None:
        self.type = type
        self.data = data
        self.metadata = metadata or {}
        self.is_main_result = is_main_result

    @classmethod
    def _from_json(cls, d: Dict[str, Any]) -> "Output":
        return cls(d.get("type", ""), d.get("data") or {}, d.get("metadata") or {}, bool(d.get("is_main_result")))

    def formats(self) -> List[str]:
        """The MIME types this output has."""
        return list(self.data)

    def _str(self, mime: str) -> Optional[str]:
        v = self.data.get(mime)
        return v if isinstance(v, str) else None

    def _bytes(self, mime: str) -> Optional[bytes]:
        v = self._str(mime)
        return base64.b64decode(v) if v else None

    text = property(lambda self: self._str("text/plain"), doc="text/plain")
    html = property(lambda self: self._str("text/html"), doc="text/html")
    markdown = property(lambda self: self._str("text/markdown"), doc="text/markdown")
    latex = property(lambda self: self._str("text/latex"), doc="text/latex")
    svg = property(lambda self: self._str("image/svg+xml"), doc="image/svg+xml")
    javascript = property(lambda self: self._str("application/javascript"), doc="application/javascript")
    png = property(lambda self: self._bytes("image/png"), doc="image/png, decoded")
    jpeg = property(lambda self: self._bytes("image/jpeg"), doc="image/jpeg, decoded")
    pdf = property(lambda self: self._bytes("application/pdf"), doc="application/pdf, decoded")
    json = property(lambda self: self.data.get("application/json"), doc="application/json, decoded")
    chart = property(lambda self: self.data.get(Output.CHART),
                     doc="the chart extracted from a matplotlib figure: type, title, x_axis, y_axis, series")
    table = property(lambda self: self.data.get(Output.TABLE),
                     doc="a DataFrame's table: {schema: {fields}, data: [rows]} (its first rows)")
    plotly = property(lambda self: self.data.get(Output.PLOTLY), doc="a plotly figure's JSON")

    @property
    def truncated(self) -> bool:
        """Whether the server's caps cut this output (``metadata['agentbox_truncated']`` says how)."""
        return "agentbox_truncated" in self.metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None):
        """The bundle for Jupyter, which takes images as base64 text, as they came."""
        data = {k: v for k, v in self.data.items()
                if (not include or k in include) and (not exclude or k not in exclude)}
        return data, {k: v for k, v in self.metadata.items() if k in data}

    def __repr__(self) -> str:
        kind = "main result" if self.is_main_result else self.type
        return f"<agentbox.Output {kind} {self.formats()}: {(self.text or '')[:60]!r}>"


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int
    error: Optional[ExecutionError]
    duration_ms: float = 0.0
    tier: str = ""
    timed_out: bool = False
    memory_exceeded: bool = False
    output_truncated: bool = False
    files: Dict[str, bytes] = field(default_factory=dict)
    # Charts and other artifacts (heavy tier): dicts with name, mime and data (bytes). A figure's
    # bytes are those of its output in ``results`` (sent once); ``output`` is that output's index.
    artifacts: List[Dict[str, Any]] = field(default_factory=list)
    # Why runtime "auto" chose the tier; fallback_from is "nano" when a nano run was repeated on heavy.
    route_reason: str = ""
    fallback_from: str = ""
    # What the sandbox reached and what was denied: dicts with time, host, port, method, path,
    # bytes_out, bytes_in, verdict (allowed, denied, redacted, blocked_dlp), rule, source, detectors
    # and reason.
    network_events: List[Dict[str, Any]] = field(default_factory=list)
    # Rich outputs in order (Output): the final expression's value, display(), figures, DataFrames.
    results: List[Output] = field(default_factory=list)
    # Outputs left out because the run's results passed max_results_bytes.
    results_omitted: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.error is None

    @property
    def main_result(self) -> Optional[Output]:
        """The value of the final expression (REPL semantics), or None."""
        return next((o for o in self.results if o.is_main_result), None)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None):
        """In Jupyter, a result shows as its main result (or its last output), else its stdout."""
        out = self.main_result or (self.results[-1] if self.results else None)
        if out is not None:
            return out._repr_mimebundle_(include, exclude)
        return {"text/plain": self.stdout + (self.stderr and "\n[stderr]\n" + self.stderr)}, {}

    @classmethod
    def _from_json(cls, d: Dict[str, Any]) -> "SandboxResult":
        err = d.get("error")
        results = [Output._from_json(o) for o in (d.get("results") or [])]
        return cls(
            stdout=d.get("stdout", ""),
            stderr=d.get("stderr", ""),
            exit_code=d.get("exit_code", 0),
            error=ExecutionError(err["type"], err["message"], err.get("traceback", "")) if err else None,
            duration_ms=d.get("duration_ms", 0.0),
            tier=d.get("tier", ""),
            timed_out=d.get("timed_out", False),
            memory_exceeded=d.get("memory_exceeded", False),
            output_truncated=d.get("output_truncated", False),
            files={p: base64.b64decode(v) for p, v in (d.get("files") or {}).items()},
            artifacts=_artifacts(d.get("artifacts") or [], results),
            route_reason=d.get("route_reason", ""),
            fallback_from=d.get("fallback_from", ""),
            network_events=list(d.get("network_events") or []),
            results=results,
            results_omitted=d.get("results_omitted", 0),
        )


@dataclass
class CommandResult:
    """A shell command's state and output (``run_command``, ``command``...). ``state`` is running,
    exited, killed (by ``signal``) or timed_out; ``exit_code`` is -1 when a signal ended it."""

    pid: int
    cmd: str
    state: str
    exit_code: int
    stdout: str
    stderr: str
    args: List[str] = field(default_factory=list)
    signal: str = ""
    truncated: bool = False
    started_at: str = ""
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "exited" and self.exit_code == 0

    @classmethod
    def _from_json(cls, d: Dict[str, Any]) -> "CommandResult":
        return cls(pid=d.get("pid", 0), cmd=d.get("cmd", ""), state=d.get("state", ""), exit_code=d.get("exit_code", 0),
                   stdout=d.get("stdout", ""), stderr=d.get("stderr", ""), args=list(d.get("args") or []),
                   signal=d.get("signal", ""), truncated=bool(d.get("truncated")), started_at=d.get("started_at", ""),
                   duration_ms=float(d.get("duration_ms") or 0))


def _artifacts(arts: List[Dict[str, Any]], results: List[Output]) -> List[Dict[str, Any]]:
    out = []
    for a in arts:
        item = {"name": a["name"], "mime": a["mime"], "data": base64.b64decode(a.get("base64") or "")}
        i = a.get("output")
        if isinstance(i, int) and 0 <= i < len(results):
            item["output"] = i
            if not item["data"]:
                item["data"] = results[i]._bytes(a["mime"]) or b""
        out.append(item)
    return out


class _LocalServer:
    """An ``agentbox serve`` child process on a free loopback port.

    The server logs a line per request on stderr; a thread drains it into a bounded ring (the pipe
    would otherwise fill after a few hundred calls and block the server), whose last lines explain
    a failure to start."""

    LOG_LINES = 200  # lines of the server's log kept
    _MAX_LINE = 64 << 10  # bytes read as one line at most

    def __init__(self, binary: Optional[str], policy: Optional[str] = None) -> None:
        # A platform wheel's own binary comes before PATH: it is the version this SDK was built with.
        path = binary or os.environ.get("AGENTBOX_BIN") or bundled_binary() or shutil.which("agentbox")
        if not path:
            raise AgentboxError("url=None starts a local server, but no agentbox binary was found: "
                                "pass binary=, set AGENTBOX_BIN, put agentbox on PATH, "
                                "or install a platform wheel of agentbox, which carries it")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.api_key = secrets.token_urlsafe(24)
        env = {k: v for k, v in os.environ.items() if k != "AGENTBOX_API_KEY"}
        self._log: Deque[str] = collections.deque(maxlen=self.LOG_LINES)
        # A state root of its own: the default one is locked by the machine's shared server, and an
        # embedded server is private to this process. Its audit log is in it (audit/audit.db). It
        # sits in a directory of its own because the server also keeps directories beside it
        # (snapshots, hosted MCP servers, the TLS inspection CA); removing that directory removes all.
        self._dir = tempfile.mkdtemp(prefix="agentbox-")
        state = os.path.join(self._dir, "state")
        # The one key may also read the server's audit log: the server is this process's own. The
        # key file is private (0600, in a 0700 directory) and removed once the server has read it.
        self._keys = os.path.join(self._dir, "keys")
        os.mkdir(self._keys, 0o700)
        key_file = os.path.join(self._keys, "keys")
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(self.api_key + " audit\n")
        args = [path, "serve", "--addr", f"127.0.0.1:{port}", "--state-dir", state, "--api-key-file", key_file]
        if policy is not None:
            args += ["--policy", policy]
        self.proc = subprocess.Popen(args, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self._drain = threading.Thread(target=self._read_log, name="agentbox-serve-log", daemon=True)
        self._drain.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._drain.join(timeout=5)
                shutil.rmtree(self._dir, ignore_errors=True)
                raise AgentboxError(f"agentbox serve exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    shutil.rmtree(self._keys, ignore_errors=True)
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise AgentboxError(f"agentbox serve did not become ready within 60 s: {self.log_tail()}")

    def _read_log(self) -> None:
        stream = self.proc.stderr
        if stream is None:
            return
        try:
            while True:
                line = stream.readline(self._MAX_LINE)
                if not line:
                    return
                self._log.append(line.decode(errors="replace").rstrip("\n"))
        except (OSError, ValueError):
            return  # the pipe was closed under us

    def log_tail(self, lines: int = 20) -> str:
        """The server's last log lines (of the LOG_LINES kept)."""
        return "\n".join(list(self._log)[-lines:]).strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class Sandbox:
    """A sandbox whose interpreter, variables and files persist across ``run`` calls (a server-side
    session, created on first use). Use as a context manager, or call ``close()``.

    With ``url=None`` a local ``agentbox serve`` is started on a free loopback port (the binary is
    found through ``binary``, ``$AGENTBOX_BIN``, the one a platform wheel carries, or ``PATH``) and
    stopped on close; ``policy`` is then its network ceiling file (``agentbox serve --policy``),
    without which sandboxes are offline. Such a server always has the nano tier; the heavy tier
    (``runtime="heavy"``, numpy/pandas) needs the host set up for it: Linux with gVisor's runsc and
    the heavy root filesystem (scripts/setup.sh), or a Linux VM on macOS and Windows
    (docs/platforms.md).
    """

    def __init__(self, config: Optional[SandboxConfig] = None, url: Optional[str] = None,
                 api_key: Optional[str] = None, *, binary: Optional[str] = None,
                 request_timeout: float = 600.0, policy: Optional[str] = None) -> None:
        self.config = config or SandboxConfig()
        self.config._limits()  # validate early
        self._local: Optional[_LocalServer] = None
        if policy is not None and url is not None:
            raise ValueError("policy is the embedded server's ceiling; a server at url has its own")
        if url is None:
            self._local = _LocalServer(binary, policy)
            url, api_key = self._local.url, self._local.api_key
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"url must be http(s)://host[:port], not {url!r}")
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("AGENTBOX_API_KEY")
        self.request_timeout = request_timeout
        self._session_id: Optional[str] = None
        self._closed = False

    # -- plumbing ------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Optional[bytes] = None,
                 content_type: Optional[str] = None, accept: str = "application/json"):
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        req.add_header("Accept", accept)
        if self.api_key:
            req.add_header("Authorization", "Bearer " + self.api_key)
        try:
            return urllib.request.urlopen(req, timeout=self.request_timeout)
        except urllib.error.HTTPError as e:
            raise _error_from(e) from None
        except urllib.error.URLError as e:
            raise AgentboxError(f"cannot reach agentbox at {self.url}: {e.reason}") from None

    def _json(self, method: str, path: str, payload: Any = None) -> Any:
        body = json.dumps(payload).encode() if payload is not None else None
        with self._request(method, path, body, "application/json" if body is not None else None) as resp:
            data = resp.read()
        return json.loads(data) if data else None

    def _stream(self, path: str, payload: Any, on_stdout: Optional[OutputCallback],
                on_stderr: Optional[OutputCallback],
                on_fallback: Optional[FallbackCallback] = None,
                on_output: Optional[OutputsCallback] = None, method: str = "POST") -> Dict[str, Any]:
        body = json.dumps(payload).encode() if payload is not None else None
        with self._request(method, path, body, "application/json" if body is not None else None, accept="text/event-stream") as resp:
            event, data = "", []
            for raw in resp:
                line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line == "":
                    if event in ("stdout", "stderr"):
                        cb = on_stdout if event == "stdout" else on_stderr
                        if cb is not None:
                            cb(json.loads("".join(data))["text"])
                    elif event == "output":
                        if on_output is not None:
                            on_output(Output._from_json(json.loads("".join(data))))
                    elif event == "fallback":
                        if on_fallback is not None:
                            fb = json.loads("".join(data))
                            on_fallback(fb.get("from", ""), fb.get("reason", ""))
                    elif event == "result":
                        return json.loads("".join(data))
                    elif event == "error":
                        err = json.loads("".join(data))["error"]
                        cls = _ERRORS.get(err.get("code"), AgentboxError)
                        raise cls(err.get("message", ""), status=200, code=err.get("code", ""),
                                  request_id=resp.headers.get("X-Request-Id", ""))
                    event, data = "", []
        raise AgentboxError("the event stream ended without a result")

    def _session_path(self) -> str:
        if self._closed:
            raise AgentboxError("this Sandbox is closed")
        if self._session_id is None:
            payload = self.config._limits()
            if self.config.ttl_s is not None:
                payload["ttl_s"] = self.config.ttl_s
            self._session_id = self._json("POST", "/v1/sessions", payload)["id"]
        return "/v1/sessions/" + urllib.parse.quote(self._session_id, safe="")

    @staticmethod
    def _file_path(remote_path: str) -> str:
        if not remote_path.startswith("/"):
            raise ValueError(f"remote path must be absolute, e.g. /data/file.csv, not {remote_path!r}")
        return "/files/" + "/".join(urllib.parse.quote(seg, safe="") for seg in remote_path[1:].split("/"))

    # -- API -----------------------------------------------------------------------------------------

    @property
    def session_id(self) -> Optional[str]:
        """The server-side session's id, once the first call has created it."""
        return self._session_id

    def list_sessions(self) -> List[Dict[str, Any]]:
        """The open sessions of this sandbox's API key (this sandbox's among them once it has run;
        every key's for an admin key), oldest first. Each has an ``owner``: a hash of the key that
        started it. Another key's sessions are not listed, and asking for one is ``NotFoundError``."""
        return self._json("GET", "/v1/sessions")["sessions"]

    # -- fleet ---------------------------------------------------------------------------------------

    def hosts(self) -> Dict[str, Any]:
        """The fleet's live hosts (GET /v1/hosts, a server started with ``--cluster``):
        ``{"self": id, "hosts": [{"id", "url", "tiers", "labels", "state", "capacity", "load",
        ...}]}``. A single server, not in a fleet, raises ``NotFoundError``."""
        return self._json("GET", "/v1/hosts")

    def drain_host(self, host_id: str = "self") -> Dict[str, Any]:
        """Stop a host (``"self"``: the one this client talks to) taking new runs and sessions
        (POST /v1/hosts/{id}/drain, admin keys); its sessions answer until they end, when its
        ``state`` turns ``"drained"``. Returns the host's record."""
        return self._json("POST", "/v1/hosts/" + urllib.parse.quote(host_id, safe="") + "/drain")

    # -- hosted MCP servers ---------------------------------------------------------------------------

    def register_mcp_server(self, spec: Dict[str, Any]) -> Dict[str, Any]:
        """Register a stdio MCP server that the server hosts in a sandbox of its own (POST
        /v1/mcp/servers): ``{"name", "command": [...], "files": {path: text}, "packages":
        ["npm:..."], "tier": "heavy"|"nano", "env", "network", "limits", "tools": {"allow",
        "deny"}, "dlp", "lazy"}``. Its tools then appear on the server's MCP endpoint as
        ``name__tool``. A name collision is ``ConflictError``, a bad spec or a server that cannot
        start ``InvalidArgumentError``. Returns the server's description (``status``,
        ``tool_names``...)."""
        return self._json("POST", "/v1/mcp/servers", spec)

    def list_mcp_servers(self) -> List[Dict[str, Any]]:
        """The hosted MCP servers of this API key (every key's for an admin key)."""
        return self._json("GET", "/v1/mcp/servers")["servers"]

    def get_mcp_server(self, name: str) -> Dict[str, Any]:
        """One hosted server's description; ``NotFoundError`` when this key has none so named."""
        return self._json("GET", "/v1/mcp/servers/" + urllib.parse.quote(name, safe=""))

    def delete_mcp_server(self, name: str) -> None:
        """Stop a hosted server and delete its registration."""
        self._json("DELETE", "/v1/mcp/servers/" + urllib.parse.quote(name, safe=""))

    def list_mcp_tools(self) -> List[Dict[str, Any]]:
        """The hosted servers' tools with their input schemas (``name`` is ``server__tool``), for
        agent frameworks that build their own tool list."""
        return self._json("GET", "/v1/mcp/tools")["tools"]

    def info(self) -> Dict[str, Any]:
        """The session's description: ``id``, ``owner`` (a hash of the API key that started it, on
        a server with keys), ``tier`` (``"heavy"`` once an auto session has moved there, with
        ``moved_from: "nano"``), ``route_reason``, ``limits``, ``cells`` and times."""
        return self._json("GET", self._session_path())

    def run(self, code: str, *, on_stdout: Optional[OutputCallback] = None,
            on_stderr: Optional[OutputCallback] = None,
            on_fallback: Optional[FallbackCallback] = None,
            on_output: Optional[OutputsCallback] = None) -> SandboxResult:
        """Run code in this sandbox's interpreter, like a notebook cell: the value of a final
        expression is the result's ``main_result``. With callbacks, output is delivered as it is
        written, ``on_output(Output)`` gets each rich output in order with it, and
        ``on_fallback(from_tier, reason)`` marks where a failed nano attempt ends and the heavy run
        begins. A program's own failure is in the result's ``error``; errors of the request raise."""
        path = self._session_path() + "/run"
        if on_stdout is None and on_stderr is None and on_fallback is None and on_output is None:
            return SandboxResult._from_json(self._json("POST", path, {"code": code}))
        return SandboxResult._from_json(self._stream(path, {"code": code}, on_stdout, on_stderr, on_fallback, on_output))

    def run_once(self, code: str, *, files: Optional[Dict[str, bytes]] = None,
                 on_stdout: Optional[OutputCallback] = None,
                 on_stderr: Optional[OutputCallback] = None,
                 on_fallback: Optional[FallbackCallback] = None,
                 on_output: Optional[OutputsCallback] = None,
                 script: bool = False) -> SandboxResult:
        """Run code in a fresh sandbox (not this one's session) with ``files`` placed first; the result
        carries the files the program left under /output. REPL semantics like ``run``, unless
        ``script`` (like ``python3 FILE``: no main result)."""
        payload = self.config._limits()
        payload["code"] = code
        if script:
            payload["script"] = True
        if files:
            payload["files"] = {p: base64.b64encode(data).decode() for p, data in files.items()}
        if on_stdout is None and on_stderr is None and on_fallback is None and on_output is None:
            return SandboxResult._from_json(self._json("POST", "/v1/run", payload))
        return SandboxResult._from_json(self._stream("/v1/run", payload, on_stdout, on_stderr, on_fallback, on_output))

    # -- shell commands (heavy tier; docs/commands.md) --------------------------------------------------

    def run_command(self, cmd: str, args: Optional[List[str]] = None, *, shell: bool = False,
                    cwd: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                    stdin: Optional[str] = None, timeout_ms: Optional[int] = None,
                    on_stdout: Optional[OutputCallback] = None,
                    on_stderr: Optional[OutputCallback] = None) -> CommandResult:
        """Run a shell command in this sandbox, next to its Python state and files, and wait for its
        end: ``cmd`` with ``args``, or with ``shell=True`` ``cmd`` as a bash command line. Commands
        need the heavy tier: a sandbox on nano moves there first when its runtime is "auto", and
        raises ``InvalidArgumentError`` naming the heavy tier when it is "nano". With callbacks,
        output is delivered as it is written. A failing command is a result (``ok`` False), not an
        exception; output past the output cap stops it (``truncated``)."""
        payload = self._command_request(cmd, args, shell, cwd, env, stdin, timeout_ms, False)
        path = self._session_path() + "/commands"
        if on_stdout is None and on_stderr is None:
            return CommandResult._from_json(self._json("POST", path, payload))
        return CommandResult._from_json(self._stream(path, payload, on_stdout, on_stderr))

    def start_command(self, cmd: str, args: Optional[List[str]] = None, *, shell: bool = False,
                      cwd: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                      stdin: Optional[str] = None, timeout_ms: Optional[int] = None) -> CommandResult:
        """Start a command in the background and return at once (``state`` running, ``pid``). Read it
        with ``command(pid)`` or ``follow_command``, feed it with ``send_stdin``, stop it with
        ``kill_command``; it keeps running between cells, within its time limit."""
        payload = self._command_request(cmd, args, shell, cwd, env, stdin, timeout_ms, True)
        return CommandResult._from_json(self._json("POST", self._session_path() + "/commands", payload))

    @staticmethod
    def _command_request(cmd: str, args: Optional[List[str]], shell: bool, cwd: Optional[str],
                         env: Optional[Dict[str, str]], stdin: Optional[str], timeout_ms: Optional[int],
                         background: bool) -> Dict[str, Any]:
        payload: Dict[str, Any] = {"cmd": cmd}
        for key, value in (("args", args), ("cwd", cwd), ("env", env), ("stdin", stdin), ("timeout_ms", timeout_ms)):
            if value is not None:
                payload[key] = value
        if shell:
            payload["shell"] = True
        if background:
            payload["background"] = True
        return payload

    def commands(self) -> List[CommandResult]:
        """The background commands of this sandbox, running or ended, oldest first (without output)."""
        return [CommandResult._from_json(c) for c in self._json("GET", self._session_path() + "/commands")["commands"]]

    def command(self, pid: int) -> CommandResult:
        """A background command's state and the output kept of it (the last max_output_bytes of each
        stream; ``truncated`` says older output was dropped). ``NotFoundError`` for an unknown pid."""
        return CommandResult._from_json(self._json("GET", self._command_path(pid)))

    def follow_command(self, pid: int, on_stdout: Optional[OutputCallback] = None,
                       on_stderr: Optional[OutputCallback] = None) -> CommandResult:
        """Deliver a background command's output to the callbacks as it is written (from the oldest
        kept) until it ends; returns its final state (without output)."""
        return CommandResult._from_json(self._stream(self._command_path(pid), None, on_stdout, on_stderr, method="GET"))

    def send_stdin(self, pid: int, data: str, *, close: bool = False) -> None:
        """Write to a background command's standard input; ``close=True`` closes it afterwards."""
        self._json("POST", self._command_path(pid) + "/stdin", {"data": data, "close": close})

    def kill_command(self, pid: int, signal: str = "SIGKILL") -> None:
        """Send a signal (SIGKILL, SIGTERM, SIGINT, SIGHUP...) to a background command and what it
        started."""
        self._json("POST", self._command_path(pid) + "/kill", {"signal": signal})

    def _command_path(self, pid: int) -> str:
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            raise ValueError(f"pid must be a positive int, not {pid!r}")
        return self._session_path() + f"/commands/{pid}"

    def set_network(self, policy: Dict[str, Any]) -> None:
        """Replace this sandbox's network policy (PATCH /v1/sessions/{id}/network), creating the session
        first if need be. It is in force for new connections at once, also while a cell runs, and
        replaces the grants of the config's task and intent too; ``{}`` makes the sandbox offline.
        A policy beyond the server's ceiling raises ``ForbiddenError`` naming the rule and changes
        nothing."""
        if not isinstance(policy, dict):
            raise TypeError(f"policy must be a dict (the API's NetworkPolicy), not {type(policy).__name__}")
        self._json("PATCH", self._session_path() + "/network", policy)

    def upload_file(self, local_path: str, remote_path: str) -> None:
        """Copy a local file into the sandbox (parent directories are created)."""
        with open(local_path, "rb") as f:
            data = f.read()
        self.write_file(remote_path, data)

    def write_file(self, remote_path: str, data: bytes) -> None:
        """Write bytes to a file in the sandbox."""
        path = self._session_path() + self._file_path(remote_path)
        with self._request("PUT", path, data, "application/octet-stream"):
            pass

    def download_file(self, remote_path: str) -> bytes:
        """Read a file from the sandbox."""
        path = self._session_path() + self._file_path(remote_path)
        with self._request("GET", path, accept="application/octet-stream") as resp:
            return resp.read()

    def list_files(self, directory: str = "/") -> List[Dict[str, Any]]:
        """List a directory: dicts with name, path, size, is_dir, mod_time."""
        query = urllib.parse.urlencode({"dir": directory})
        return self._json("GET", self._session_path() + "/files?" + query)["files"]

    # -- time travel (docs/time-travel.md) ------------------------------------------------------------

    def steps(self) -> Dict[str, Any]:
        """The session's steps, oldest first: ``{"session", "current", "steps": [...]}``. Each step has
        ``n``, ``kind`` (start, cell, upload, rewind, fork, command, restore), ``code``/``path``, a result
        summary, and ``snapshot`` (``state``, ``bytes``, ``restorable``, ``restore_on``, ``restore_by``,
        ``reason``). A ``restore`` step (a fleet brought the session back on another host after its host
        died, docs/cluster.md) has ``target`` (the step restored), ``restored_from`` (the dead host) and
        ``lost`` (steps that ran there after ``target``)."""
        return self._json("GET", self._session_path() + "/steps")

    def step(self, n: int) -> Dict[str, Any]:
        """Step ``n`` with its full ``result`` and the ``variables`` and ``files`` after it."""
        return self._json("GET", self._session_path() + "/steps/" + str(int(n)))

    def step_file(self, n: int, remote_path: str) -> bytes:
        """A file as it was after step ``n`` (a step without a snapshot of its own is ConflictError)."""
        path = self._session_path() + "/steps/" + str(int(n)) + self._file_path(remote_path)
        with self._request("GET", path, accept="application/octet-stream") as resp:
            return resp.read()

    def rewind(self, n: int) -> Dict[str, Any]:
        """Continue from the state after step ``n``; later steps stay listed as abandoned. Returns the
        session's description."""
        return self._json("POST", self._session_path() + "/rewind", {"step": int(n)})

    def fork(self, n: int, *, ttl_s: Optional[int] = None) -> "Sandbox":
        """A new Sandbox (a new session, this one untouched) starting from the state after step ``n``.
        It talks to the same server; closing it ends only its own session."""
        payload: Dict[str, Any] = {"step": int(n)}
        if ttl_s is not None:
            payload["ttl_s"] = int(ttl_s)
        info = self._json("POST", self._session_path() + "/fork", payload)
        child = Sandbox(self.config, url=self.url, api_key=self.api_key, request_timeout=self.request_timeout)
        child._session_id = info["id"]
        return child

    def pin(self, n: int) -> None:
        """Keep step ``n``'s snapshot whatever retention says, also after the session is closed."""
        self._json("POST", self._session_path() + "/steps/" + str(int(n)) + "/pin")

    def unpin(self, n: int) -> None:
        """Let retention remove step ``n``'s snapshot again."""
        self._json("DELETE", self._session_path() + "/steps/" + str(int(n)) + "/pin")

    # -- audit log (needs a key with the audit scope; the embedded server's key has it) ----------------

    def audit_events(self, *, since: Optional[str] = None, until: Optional[str] = None,
                     type: Optional[str] = None, session: Optional[str] = None,
                     verdict: Optional[str] = None, actor: Optional[str] = None,
                     q: Optional[str] = None, cursor: Optional[str] = None,
                     limit: Optional[int] = None) -> Dict[str, Any]:
        """One page of audit events, newest first: ``{"events": [...], "next_cursor": ...}``.

        ``since``/``until`` are RFC 3339, a date or a duration back from now (``"24h"``, ``"7d"``);
        ``type`` is an event type or a prefix (``"egress"``); ``q`` is full-text over hosts, paths and
        messages. Pass ``next_cursor`` back as ``cursor`` for the next page."""
        params = {"since": since, "until": until, "type": type, "session": session, "verdict": verdict,
                  "actor": actor, "q": q, "cursor": cursor, "limit": limit}
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self._json("GET", "/v1/audit/events" + ("?" + query if query else ""))

    def iter_audit_events(self, **filters: Any) -> Iterator[Dict[str, Any]]:
        """Every audit event the filters (those of ``audit_events``) select, page after page."""
        filters.pop("cursor", None)
        cursor = None
        while True:
            page = self.audit_events(cursor=cursor, **filters)
            yield from page["events"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def audit_report(self, period: str = "daily", *, date: Optional[str] = None,
                     format: str = "json") -> Union[Dict[str, Any], str]:
        """The daily or weekly compliance report containing ``date`` (``"YYYY-MM-DD"``, UTC; default
        today): a dict for ``format="json"``, the text of ``"md"`` or of ``"html"`` (a self-contained
        page with charts)."""
        params = {"format": format}
        if date is not None:
            params["date"] = date
        path = "/v1/audit/reports/" + urllib.parse.quote(period, safe="") + "?" + urllib.parse.urlencode(params)
        if format == "json":
            return self._json("GET", path)
        with self._request("GET", path, accept="*/*") as resp:
            return resp.read().decode()

    def audit_verify(self, host: Optional[str] = None) -> Dict[str, Any]:
        """Check the audit log's hash chain and signed checkpoints on the server: ``ok``, the range
        checked and, when broken, ``bad_seq``/``bad_event_id`` of the first bad event and ``problem``.
        In a fleet each host has its own chain: ``host`` names the one to check (default the host that
        answers); a single server raises NotFoundError for it."""
        if host is None:
            return self._json("GET", "/v1/audit/verify")
        return self._json("GET", "/v1/audit/verify?" + urllib.parse.urlencode({"host": host}))

    def close(self) -> None:
        """End the session and, if this Sandbox started one, the local server. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._session_id is not None:
                try:
                    self._json("DELETE", "/v1/sessions/" + urllib.parse.quote(self._session_id, safe=""))
                except NotFoundError:
                    pass  # already reaped or ended
        finally:
            if self._local is not None:
                self._local.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        local = getattr(self, "_local", None)
        if local is not None and not getattr(self, "_closed", True):
            local.close()


def _error_from(e: urllib.error.HTTPError) -> AgentboxError:
    raw = e.read()
    code, message = "", raw.decode(errors="replace").strip()
    try:
        detail = json.loads(raw)["error"]
        code, message = detail["code"], detail["message"]
    except (ValueError, KeyError, TypeError):
        pass
    retry = e.headers.get("Retry-After")
    cls = _ERRORS.get(code, AgentboxError)
    return cls(message or e.reason, status=e.code, code=code, request_id=e.headers.get("X-Request-Id", ""),
               retry_after=float(retry) if retry and retry.isdigit() else None)
