"""Shell commands and env through the Python SDK, against a real agentbox server (heavy tier)."""

import os
import shutil
import threading

import pytest

from agentbox import InvalidArgumentError, NotFoundError, Sandbox, SandboxConfig

BIN = os.environ.get("AGENTBOX_BIN") or shutil.which("agentbox")
if not BIN:
    raise RuntimeError("these tests need the agentbox binary: set AGENTBOX_BIN (scripts/test.sh does)")


@pytest.fixture(scope="module")
def server():
    owner = Sandbox(binary=BIN)
    yield owner.url, owner.api_key
    owner.close()


def test_env_reaches_runs_and_sessions(server):
    url, key = server
    with Sandbox(config=SandboxConfig(env={"GREETING": "hi"}), url=url, api_key=key) as sb:
        assert sb.run("import os\nprint(os.environ['GREETING'])").stdout == "hi\n"
        assert sb.run_once("import os\nprint(os.environ['GREETING'])").stdout == "hi\n"


def test_commands_on_heavy(server):
    url, key = server
    with Sandbox(url=url, api_key=key) as sb:
        sb.run("open('/home/user/note.txt', 'w').write('from python')")
        r = sb.run_command("cat", ["note.txt"])
        assert r.ok and r.stdout == "from python" and sb.info()["tier"] == "heavy", r
        r = sb.run_command("echo out; echo err >&2; exit 3", shell=True, env={"X": "1"})
        assert not r.ok and r.exit_code == 3 and r.stdout == "out\n" and r.stderr == "err\n", r
        seen = []
        r = sb.run_command("printf", ["%s\\n", "a", "b"], on_stdout=seen.append)
        assert "".join(seen) == "a\nb\n" and r.stdout == "a\nb\n", (seen, r)
        r = sb.run_command("sleep", ["30"], timeout_ms=300)
        assert r.state == "timed_out", r

        bg = sb.start_command("cat")
        assert bg.state == "running" and bg.pid > 1, bg
        followed = []
        done = {}
        t = threading.Thread(target=lambda: done.setdefault("r", sb.follow_command(bg.pid, on_stdout=followed.append)))
        t.start()
        sb.send_stdin(bg.pid, "ping\n", close=True)
        t.join(30)
        assert done["r"].state == "exited" and "".join(followed) == "ping\n", (done, followed)
        assert sb.command(bg.pid).stdout == "ping\n"
        sleeper = sb.start_command("sleep", ["60"])
        assert [c.pid for c in sb.commands()] == [bg.pid, sleeper.pid]
        sb.kill_command(sleeper.pid, "SIGTERM")
        for _ in range(100):
            if sb.command(sleeper.pid).state != "running":
                break
            threading.Event().wait(0.05)
        st = sb.command(sleeper.pid)
        assert st.state == "killed" and st.signal == "SIGTERM", st
        with pytest.raises(NotFoundError):
            sb.command(99999)
        with pytest.raises(ValueError):
            sb.command(0)


def test_commands_on_nano_name_heavy(server):
    url, key = server
    with Sandbox(config=SandboxConfig(runtime="nano"), url=url, api_key=key) as sb:
        with pytest.raises(InvalidArgumentError, match='tier "heavy"'):
            sb.run_command("ls")
