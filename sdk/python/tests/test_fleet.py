"""A fleet of two agentbox servers (one with an embedded NATS server) through the Python SDK."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

from agentbox import ForbiddenError, NotFoundError, Sandbox

BIN = os.environ.get("AGENTBOX_BIN") or shutil.which("agentbox")
if not BIN:
    raise RuntimeError("these tests need the agentbox binary: set AGENTBOX_BIN (scripts/test.sh does)")

USER, ADMIN = "fleet-user-key-0123456789", "fleet-admin-key-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agentbox serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("agentbox serve did not become ready")


@pytest.fixture(scope="module")
def fleet():
    tmp = tempfile.mkdtemp(prefix="agentbox-fleet-")
    keys = os.path.join(tmp, "keys")
    with open(keys, "w") as f:
        f.write(f"{USER}\n{ADMIN} admin\n")
    nats = f"127.0.0.1:{free_port()}"
    procs, urls = [], []
    for i in range(2):
        port = free_port()
        args = [BIN, "serve", "--addr", f"127.0.0.1:{port}", "--state-dir", os.path.join(tmp, f"s{i}"),
                "--api-key-file", keys, "--host-id", f"p{i}", "--mcp-dir", "off", "--audit-db", "off"]
        args += ["--cluster", "embedded", "--cluster-listen", nats] if i == 0 else ["--cluster", "nats://" + nats]
        env = {k: v for k, v in os.environ.items() if k != "AGENTBOX_API_KEY"}
        p = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        urls.append(f"http://127.0.0.1:{port}")
        wait_ready(urls[-1], p)
    yield urls
    for p in reversed(procs):
        p.terminate()
        p.wait(timeout=30)
    shutil.rmtree(tmp, ignore_errors=True)


def test_hosts_lists_the_fleet(fleet):
    sb = Sandbox(url=fleet[1], api_key=USER)
    deadline = time.monotonic() + 10
    while True:
        hosts = sb.hosts()
        if len(hosts["hosts"]) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert hosts["self"] == "p1"
    assert sorted(h["id"] for h in hosts["hosts"]) == ["p0", "p1"]
    assert all(h["state"] == "active" and "nano" in h["tiers"] for h in hosts["hosts"])


def test_drain_host_needs_admin_and_drains(fleet):
    with pytest.raises(ForbiddenError):
        Sandbox(url=fleet[0], api_key=USER).drain_host("p1")
    host = Sandbox(url=fleet[0], api_key=ADMIN).drain_host("p1")
    assert host["id"] == "p1" and host["state"] in ("draining", "drained")


def test_single_server_has_no_hosts():
    with Sandbox(binary=BIN) as sb:
        with pytest.raises(NotFoundError):
            sb.hosts()
