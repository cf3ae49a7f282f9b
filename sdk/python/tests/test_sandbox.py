"""Tests of the Python SDK against a real agentbox server (the binary from $AGENTBOX_BIN or PATH)."""

import base64
import os
import shutil
import threading

import pytest

from agentbox import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    OverloadedError,
    Sandbox,
    SandboxConfig,
    UnauthenticatedError,
)

BIN = os.environ.get("AGENTBOX_BIN") or shutil.which("agentbox")
if not BIN:
    raise RuntimeError("these tests need the agentbox binary: set AGENTBOX_BIN (scripts/test.sh does)")


@pytest.fixture(scope="module")
def server():
    """One local server for the module, started by the SDK itself (url=None)."""
    owner = Sandbox(binary=BIN)
    yield owner.url, owner.api_key
    owner.close()
    assert owner._local.proc.poll() is not None, "the local server was not stopped"


def test_run_and_state(server):
    url, key = server
    with Sandbox(url=url, api_key=key) as sb:
        r = sb.run("import math\nx = 20")
        assert r.ok and r.tier == "nano"
        r = sb.run("print(math.factorial(5) + x)")
        assert r.stdout == "140\n"
        assert r.exit_code == 0 and r.error is None


def test_files_round_trip(server, tmp_path):
    url, key = server
    local = tmp_path / "in.csv"
    local.write_text("a,1\nb,2\n")
    with Sandbox(url=url, api_key=key) as sb:
        sb.upload_file(str(local), "/data/in.csv")
        r = sb.run("import csv\nrows = list(csv.reader(open('/data/in.csv')))\n"
                   "open('/output/sum.txt', 'w').write(str(sum(int(n) for _, n in rows)))")
        assert r.ok, r.stderr
        assert sb.download_file("/output/sum.txt") == b"3"
        names = [f["name"] for f in sb.list_files("/data")]
        assert names == ["in.csv"]
        sb.write_file("/data/blob.bin", bytes(range(256)))
        assert sb.download_file("/data/blob.bin") == bytes(range(256))
        with pytest.raises(NotFoundError):
            sb.download_file("/data/missing.txt")
        with pytest.raises(ValueError):
            sb.download_file("relative.txt")


def test_errors_are_structured(server):
    url, key = server
    with Sandbox(url=url, api_key=key) as sb:
        r = sb.run("def f():\n    raise KeyError('k')\nf()")
        assert r.exit_code == 1 and r.error.type == "KeyError"
        assert "line 2, in f" in r.error.traceback
        r = sb.run("import sys; sys.exit(4)")
        assert r.exit_code == 4 and r.error is None


def test_limits(server):
    url, key = server
    cfg = SandboxConfig(timeout_ms=300, memory_limit_mb=48, allowed_modules=["json"])
    with Sandbox(config=cfg, url=url, api_key=key) as sb:
        r = sb.run_once("while True: pass")
        assert r.timed_out and r.exit_code == 124 and r.error.type == "Timeout"
        r = sb.run_once("b = bytearray(200 << 20)")
        assert r.memory_exceeded and r.exit_code == 137
        r = sb.run_once("import os")
        assert r.error.type == "ImportError" and "'os' is not allowed" in r.error.message


def test_streaming_callbacks(server):
    url, key = server
    out, err = [], []
    with Sandbox(url=url, api_key=key) as sb:
        r = sb.run("import sys\nfor i in range(3): print(i, flush=True)\nprint('warn', file=sys.stderr)",
                   on_stdout=out.append, on_stderr=err.append)
    assert "".join(out) == "0\n1\n2\n" == r.stdout
    assert "".join(err) == "warn\n"


def test_run_once_returns_output_files(server):
    url, key = server
    with Sandbox(url=url, api_key=key) as sb:
        r = sb.run_once("open('/output/r.txt', 'w').write(open('/data/q').read() * 2)", files={"/data/q": b"ab"})
    assert r.files == {"/output/r.txt": b"abab"}


def test_request_errors(server):
    url, key = server
    with pytest.raises(UnauthenticatedError):
        Sandbox(url=url, api_key="wrong-key-0123456789").run("1")
    with pytest.raises(InvalidArgumentError) as exc:
        Sandbox(config=SandboxConfig(memory_limit_mb=10 ** 6), url=url, api_key=key).run("1")
    assert exc.value.status == 400 and "maximum" in exc.value.message
    with pytest.raises(InvalidArgumentError, match='package index|heavy'):
        Sandbox(config=SandboxConfig(packages=["numpy"]), url=url, api_key=key).run("1")
    with pytest.raises(ValueError):
        SandboxConfig(runtime="gpu")._limits()
    with pytest.raises(ValueError):
        Sandbox(url="ftp://example", api_key=key)


def test_session_busy_and_closed(server):
    url, key = server
    sb = Sandbox(url=url, api_key=key)
    sb.run("import time")
    started = threading.Event()
    t = threading.Thread(target=lambda: sb.run("print('go', flush=True)\ntime.sleep(1)", on_stdout=lambda _: started.set()))
    t.start()
    assert started.wait(10)
    with pytest.raises(ConflictError):
        sb.run("1")
    t.join()
    sb.close()
    sb.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        sb.run("1")


def test_missing_binary_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("AGENTBOX_BIN", raising=False)
    with pytest.raises(Exception, match="agentbox binary"):
        Sandbox()


def test_heavy_tier_with_chart(server):
    url, key = server
    code = ("import pandas as pd, matplotlib.pyplot as plt\n"
            "df = pd.DataFrame({'x': [1, 2, 3], 'y': [3, 1, 2]})\n"
            "print(int(df.y.sum()))\n"
            "df.plot(x='x', y='y')\n"
            "plt.show()")
    with Sandbox(config=SandboxConfig(runtime="heavy"), url=url, api_key=key) as sb:
        r = sb.run(code)
        assert r.ok and r.tier == "heavy" and r.stdout == "6\n", r
        assert len(r.artifacts) == 1 and r.artifacts[0]["data"][:8] == b"\x89PNG\r\n\x1a\n"
        sb.write_file("/data/n.txt", b"5")
        assert sb.run("print(int(open('/data/n.txt').read()) * df.y.max())").stdout == "15\n"


def test_auto_routing_reports_its_reason(server):
    url, key = server
    with Sandbox(url=url, api_key=key) as sb:
        r = sb.run_once("import pandas as pd\nprint(len(pd.DataFrame({'a': [1, 2]})))")
        assert r.tier == "heavy" and r.stdout == "2\n" and "pandas" in r.route_reason, r
        fell_back = []
        r = sb.run_once("m = __import__('nu' + 'mpy')\nprint(int(m.arange(4).sum()))",
                        on_fallback=lambda tier, reason: fell_back.append((tier, reason)))
        assert r.fallback_from == "nano" and r.tier == "heavy" and r.stdout == "6\n", r
        assert len(fell_back) == 1 and fell_back[0][0] == "nano" and "numpy" in fell_back[0][1], fell_back


def test_auto_session_moves_to_heavy_with_its_state(server):
    url, key = server
    with Sandbox(url=url, api_key=key) as sb:
        sb.write_file("/data/n.txt", b"3")
        assert sb.run("n = int(open('/data/n.txt').read())").tier == "nano"
        assert sb.info()["tier"] == "nano"
        session = sb.session_id
        r = sb.run("import numpy as np\nprint(int(np.arange(n).sum()))")
        assert r.ok and r.tier == "heavy" and r.stdout == "3\n", r
        assert "moved to heavy (1 earlier cells replayed, 1 files copied)" in r.route_reason, r
        info = sb.info()
        assert info["id"] == session and info["tier"] == "heavy" and info["moved_from"] == "nano", info
        assert sb.download_file("/data/n.txt") == b"3"


def test_list_sessions(server):
    url, key = server
    with Sandbox(url=url, api_key=key) as sb:
        sb.run("x = 1")
        assert sb.session_id in [s["id"] for s in sb.list_sessions()]
        session = sb.session_id
    with Sandbox(url=url, api_key=key) as other:
        assert session not in [s["id"] for s in other.list_sessions()]


def test_keys_are_tenants(tmp_path):
    """Each API key sees only its own sessions; an admin key sees them all (--api-key-file)."""
    import socket
    import subprocess
    import time
    import urllib.request

    key_a, key_b, key_admin = "sk-a-" + "1" * 16, "sk-b-" + "2" * 16, "sk-ops-" + "3" * 16
    keys = tmp_path / "keys"
    keys.write_text(f"{key_a} sessions=1\n{key_b}\n{key_admin} admin\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([BIN, "serve", "--addr", f"127.0.0.1:{port}", "--api-key-file", str(keys),
                             "--state-dir", str(tmp_path / "state")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "agentbox serve did not start"
                time.sleep(0.05)
        with Sandbox(url=url, api_key=key_a) as a, Sandbox(url=url, api_key=key_b) as b:
            assert a.run("x = 1").ok
            sid = a.session_id
            assert [s["id"] for s in a.list_sessions()] == [sid]
            assert a.info()["owner"].startswith("key_") and key_a not in str(a.info())
            assert b.list_sessions() == []
            with pytest.raises(NotFoundError):
                b._json("GET", "/v1/sessions/" + sid)
            with pytest.raises(OverloadedError):  # sessions=1
                Sandbox(url=url, api_key=key_a).run("1")
            admin = Sandbox(url=url, api_key=key_admin)
            assert [s["id"] for s in admin.list_sessions()] == [sid]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_embedded_server_survives_thousands_of_calls():
    """The embedded server logs a line per request; undrained, its stderr pipe filled after a few
    hundred calls and the server blocked (issue 9, finding 6)."""
    calls = 3000
    with Sandbox(binary=BIN, request_timeout=60) as sb:
        sb.run("n = 0")
        for _ in range(calls - 2):
            sb.run("n += 1")
        r = sb.run("print(n)")
        assert r.stdout == f"{calls - 2}\n"
        assert "request" in sb._local.log_tail(), "the server's log was not kept"
        assert len(sb._local._log) <= sb._local.LOG_LINES


def test_startup_failure_shows_the_server_log(tmp_path):
    fake = tmp_path / "agentbox"
    fake.write_text("#!/bin/sh\nfor i in $(seq 1 5000); do echo \"noise $i\" >&2; done\n"
                    "echo 'agentbox: listening on 127.0.0.1: the last words' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(Exception, match="exited with 3") as exc:
        Sandbox(binary=str(fake))
    assert "the last words" in str(exc.value)
    assert "noise 1\n" not in str(exc.value)


def test_mcp_servers(server):
    """Register our stdlib test server on nano, list it and its tools, delete it."""
    url, key = server
    here = os.path.dirname(os.path.abspath(__file__))
    src = open(os.path.join(here, "..", "..", "..", "internal", "mcphost", "testdata", "server.py")).read()
    spec = {"name": "pysdk", "tier": "nano", "command": ["python3", "server.py"], "files": {"server.py": src},
            "tools": {"allow": ["echo", "add"]}}
    with Sandbox(url=url, api_key=key) as sb:
        info = sb.register_mcp_server(spec)
        assert info["status"] == "running" and info["tool_names"] == ["pysdk__echo", "pysdk__add"]
        with pytest.raises(ConflictError):
            sb.register_mcp_server(spec)
        with pytest.raises(InvalidArgumentError):
            sb.register_mcp_server(dict(spec, name="Bad Name"))
        assert [s["name"] for s in sb.list_mcp_servers()] == ["pysdk"]
        assert sb.get_mcp_server("pysdk")["file_names"] == ["server.py"]
        tools = {t["name"]: t for t in sb.list_mcp_tools()}
        assert set(tools) == {"pysdk__echo", "pysdk__add"}
        assert tools["pysdk__add"]["input_schema"]["type"] == "object"
        sb.delete_mcp_server("pysdk")
        with pytest.raises(NotFoundError):
            sb.get_mcp_server("pysdk")


def test_audit_log(server):
    """The embedded server's key has the audit scope: runs and files are in the log (code as its
    hash only), searchable with filters and pages; reports and verification come back."""
    import hashlib

    url, key = server
    code = "print('audited')"
    with Sandbox(url=url, api_key=key) as sb:
        assert sb.run(code).ok
        sb.write_file("/data/a.txt", b"abc")
        runs = sb.audit_events(type="run", session=sb.session_id, since="1h")["events"]
        assert len(runs) == 1
        d = runs[0]["details"]
        assert d["code_sha256"] == hashlib.sha256(code.encode()).hexdigest() and d["code_size"] == len(code)
        assert "audited" not in str(runs[0])
        up = sb.audit_events(q="a.txt", type="file.upload")["events"]
        assert up and up[0]["details"]["sha256"] == hashlib.sha256(b"abc").hexdigest()
        first = sb.audit_events(limit=1)
        assert len(first["events"]) == 1 and first["next_cursor"]
        every = list(sb.iter_audit_events(limit=2))
        assert len(every) >= 3 and len({e["id"] for e in every}) == len(every)
        rep = sb.audit_report("weekly")
        assert rep["events"] >= 3 and rep["verification"]["ok"]
        html = sb.audit_report("daily", format="html")
        assert html.startswith("<!DOCTYPE html>") and "<svg" in html
        assert "# agentbox audit report" in sb.audit_report("daily", format="md")
        v = sb.audit_verify()
        assert v["ok"] and v["events"] >= 3
        with pytest.raises(InvalidArgumentError):
            sb.audit_report("monthly")
        with pytest.raises(InvalidArgumentError):
            sb.audit_events(verdict="maybe")


def test_rich_results_and_main_result(server):
    url, key = server
    code = ("class Card:\n    def _repr_html_(self): return '<b>card</b>'\n"
            "print('a', flush=True)\ndisplay(Card())\n"
            "display({'application/json': {'k': [1, 2]}, 'text/plain': 'j'}, raw=True)\n"
            "print('b')\n{'total': 3}")
    seen = []
    with Sandbox(url=url, api_key=key) as sb:
        r = sb.run(code, on_stdout=lambda s: seen.append(("stdout", s)),
                   on_output=lambda o: seen.append((o.type, o.text)))
        assert [kind for kind, _ in seen] == ["stdout", "display_data", "display_data", "stdout", "execute_result"], seen
        assert len(r.results) == 3 and r.results[0].html == "<b>card</b>" and r.results[1].json == {"k": [1, 2]}
        assert r.main_result is r.results[2] and r.main_result.text == "{'total': 3}"
        assert sb.run("x = 1").main_result is None
        assert sb.run("x;").results == []
        assert sb.run_once("40 + 2", script=True).results == []
        assert sb.run_once("40 + 2").main_result.text == "42"


def test_outputs_show_in_jupyter(server):
    url, key = server
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    with Sandbox(url=url, api_key=key) as sb:
        r = sb.run(f"display({{'image/png': {png!r}, 'text/plain': 'img'}}, raw=True, metadata={{'image/png': {{'width': 1}}}})\n'v'")
    data, meta = r.results[0]._repr_mimebundle_()
    assert data == {"image/png": png, "text/plain": "img"} and meta == {"image/png": {"width": 1}}
    assert r.results[0].png == b"\x89PNG\r\n\x1a\n" and r.results[0].formats() == ["image/png", "text/plain"]
    assert r.results[0]._repr_mimebundle_(include=["text/plain"])[0] == {"text/plain": "img"}
    assert r._repr_mimebundle_()[0] == {"text/plain": "'v'"}  # a result shows as its main result


def test_result_caps_are_config(server):
    url, key = server
    with Sandbox(config=SandboxConfig(max_result_bytes=2000), url=url, api_key=key) as sb:
        r = sb.run("'x' * 10000")
    assert r.main_result.truncated and len(r.main_result.text) <= 2000
    with pytest.raises(InvalidArgumentError):
        Sandbox(config=SandboxConfig(max_results_bytes=-1), url=url, api_key=key).run("1")


def test_heavy_chart_comes_once_with_its_data(server):
    url, key = server
    with Sandbox(config=SandboxConfig(runtime="heavy"), url=url, api_key=key) as sb:
        r = sb.run("import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [3, 5])\nplt.title('sales')\nNone")
    assert r.ok and len(r.results) == 1, r
    fig = r.results[0]
    assert fig.png[:8] == b"\x89PNG\r\n\x1a\n" and fig.chart["type"] == "bar" and fig.chart["title"] == "sales"
    assert fig.chart["series"][0]["x"] == ["a", "b"] and fig.chart["series"][0]["y"] == [3, 5]
    assert r.artifacts[0]["output"] == 0 and r.artifacts[0]["data"] == fig.png
