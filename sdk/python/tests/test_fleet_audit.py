"""A fleet's audit search, reports and per-host chain verification through the Python SDK."""

import os
import shutil
import subprocess
import tempfile
import time

import pytest

from agentbox import NotFoundError, Sandbox

from test_fleet import BIN, free_port, wait_ready

AUDITOR = "fleet-audit-key-0123456789"


@pytest.fixture(scope="module")
def audited_fleet():
    tmp = tempfile.mkdtemp(prefix="agentbox-fleet-audit-")
    keys = os.path.join(tmp, "keys")
    with open(keys, "w") as f:
        f.write(f"{AUDITOR} audit\n")
    nats = f"127.0.0.1:{free_port()}"
    procs, urls = [], []
    for i in range(2):
        port = free_port()
        args = [BIN, "serve", "--addr", f"127.0.0.1:{port}", "--state-dir", os.path.join(tmp, f"s{i}"),
                "--api-key-file", keys, "--host-id", f"a{i}", "--mcp-dir", "off"]
        args += ["--cluster", "embedded", "--cluster-listen", nats] if i == 0 else ["--cluster", "nats://" + nats]
        env = {k: v for k, v in os.environ.items() if k != "AGENTBOX_API_KEY"}
        p = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        urls.append(f"http://127.0.0.1:{port}")
        wait_ready(urls[-1], p)
    sb = Sandbox(url=urls[1], api_key=AUDITOR)
    deadline = time.monotonic() + 10
    while len(sb.hosts()["hosts"]) != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    yield urls
    for p in reversed(procs):
        p.terminate()
        p.wait(timeout=30)
    shutil.rmtree(tmp, ignore_errors=True)


def test_search_and_report_cover_both_hosts(audited_fleet):
    # Each host records its own start: a search from either host finds both.
    sb = Sandbox(url=audited_fleet[0], api_key=AUDITOR)
    starts = [e for e in sb.iter_audit_events(type="server.start")]
    assert sorted(e["log_host"] for e in starts) == ["a0", "a1"]
    report = sb.audit_report("daily")
    assert sorted(h["host"] for h in report["hosts"]) == ["a0", "a1"]
    assert report["verification"]["ok"] and not report.get("hosts_missing")


def test_verify_names_one_hosts_chain(audited_fleet):
    sb = Sandbox(url=audited_fleet[0], api_key=AUDITOR)
    assert sb.audit_verify(host="a1")["ok"]
    assert sb.audit_verify()["ok"]
    with pytest.raises(NotFoundError):
        sb.audit_verify(host="a9")
