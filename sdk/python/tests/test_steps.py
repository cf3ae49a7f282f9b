"""Time travel through the Python SDK against a real agentbox server (the binary from $AGENTBOX_BIN)."""

import os
import shutil
import time

import pytest

from agentbox import NotFoundError, Sandbox

BIN = os.environ.get("AGENTBOX_BIN") or shutil.which("agentbox")
if not BIN:
    raise RuntimeError("these tests need the agentbox binary: set AGENTBOX_BIN (scripts/test.sh does)")


@pytest.fixture(scope="module")
def server():
    owner = Sandbox(binary=BIN)
    yield owner.url, owner.api_key
    owner.close()


def settled(sb):
    """The step list once no snapshot is pending."""
    deadline = time.monotonic() + 30
    while True:
        steps = sb.steps()
        if all(s["snapshot"]["state"] != "pending" for s in steps["steps"]) or time.monotonic() > deadline:
            return steps
        time.sleep(0.01)


def test_steps_rewind_fork(server):
    url, key = server
    with Sandbox(url=url, api_key=key) as sb:
        sb.run("x = 1\nopen('/tmp/f', 'w').write('one')")
        sb.write_file("/data/up.txt", b"up")
        sb.run("x = 2\nprint(x)")
        steps = settled(sb)
        assert [s["kind"] for s in steps["steps"]] == ["start", "cell", "upload", "cell"]
        assert steps["current"] == 3 and steps["steps"][3]["stdout_head"] == "2\n"
        assert steps["steps"][2]["path"] == "/data/up.txt"
        detail = sb.step(3)
        assert detail["result"]["stdout"] == "2\n" and "variables" in detail and "files" in detail

        info = sb.rewind(1)
        assert info["current_step"] == 4
        r = sb.run("import os\nprint(x, os.path.exists('/data/up.txt'), open('/tmp/f').read())")
        assert r.stdout == "1 False one\n"
        steps = settled(sb)
        assert steps["steps"][2]["abandoned"] and steps["steps"][3]["abandoned"]

        with sb.fork(3, ttl_s=60) as child:
            assert child.session_id != sb.session_id
            assert child.run("print(x)").stdout == "2\n"
            assert child.steps()["steps"][0]["forked_from"] == sb.session_id
        assert sb.run("print(x)").stdout == "1\n"  # the parent goes on untouched

        assert steps["steps"][1]["snapshot"]["state"] == "stored"
        sb.pin(1)
        assert settled(sb)["steps"][1]["pinned"]
        assert sb.step_file(1, "/tmp/f") == b"one"
        with pytest.raises(NotFoundError):
            sb.step_file(1, "/data/up.txt")  # uploaded at step 2
        sb.unpin(1)
        with pytest.raises(NotFoundError):
            sb.step(99)
        with pytest.raises(ValueError):
            sb.step_file(1, "relative/path")
