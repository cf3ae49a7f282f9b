"""The network fields and set_network of the Python SDK, against a real server with a ceiling."""

import os
import shutil

import pytest

from agentbox import ForbiddenError, InvalidArgumentError, Sandbox, SandboxConfig, SandboxResult

BIN = os.environ.get("AGENTBOX_BIN") or shutil.which("agentbox")
if not BIN:
    raise RuntimeError("these tests need the agentbox binary: set AGENTBOX_BIN (scripts/test.sh does)")


@pytest.fixture(scope="module")
def ceiling_server(tmp_path_factory):
    policy = tmp_path_factory.mktemp("policy") / "policy.toml"
    policy.write_text('allow = ["pypi.org", "files.pythonhosted.org", "example.com"]\ndlp_min = "log"\n')
    owner = Sandbox(binary=BIN, policy=str(policy))
    yield owner.url, owner.api_key
    owner.close()


def test_run_with_a_network_inside_the_ceiling(ceiling_server):
    url, key = ceiling_server
    cfg = SandboxConfig(network={"allow": ["pypi.org", {"host": "example.com", "methods": ["GET"]}], "dlp": "log"},
                        task="read https://example.com/docs/", intent={"packages": ["rich"]})
    with Sandbox(cfg, url=url, api_key=key) as sb:
        r = sb.run_once("print(1)")
        assert r.ok and r.stdout == "1\n"
        assert r.network_events == []  # nothing reached out (no data plane yet on this tier)


def test_refusals_name_the_ceiling_rule(ceiling_server):
    url, key = ceiling_server
    with Sandbox(SandboxConfig(network={"allow": ["evil.com"]}), url=url, api_key=key) as sb:
        with pytest.raises(ForbiddenError, match='ceiling:allow: network.allow\\[0\\] "evil.com"'):
            sb.run_once("print(1)")
        with pytest.raises(ForbiddenError, match="ceiling:allow"):
            sb.run("print(1)")  # the session is refused the same way
    with Sandbox(SandboxConfig(network={"allow": ["pypi.org"], "dlp": "off"}), url=url, api_key=key) as sb:
        with pytest.raises(ForbiddenError, match="ceiling:dlp_min"):
            sb.run_once("1")
    with Sandbox(SandboxConfig(network={"allow": [{"host": "pypi.org", "no_inspec": True}]}), url=url, api_key=key) as sb:
        with pytest.raises(InvalidArgumentError, match="no_inspec"):
            sb.run_once("1")


def test_set_network(ceiling_server):
    url, key = ceiling_server
    with Sandbox(SandboxConfig(network={"allow": ["pypi.org"]}), url=url, api_key=key) as sb:
        assert sb.run("x = 1").ok
        sb.set_network({"allow": ["example.com"]})
        sb.set_network({})  # offline
        with pytest.raises(ForbiddenError, match="ceiling:allow"):
            sb.set_network({"allow": ["*.evil.com"]})
        with pytest.raises(InvalidArgumentError):
            sb.set_network({"allow_all": True})
        with pytest.raises(TypeError):
            sb.set_network(["pypi.org"])
        assert sb.run("print(x)").stdout == "1\n"


def test_no_ceiling_is_a_clear_error():
    with Sandbox(SandboxConfig(network={"allow": ["pypi.org"]}), binary=BIN) as sb:
        with pytest.raises(ForbiddenError, match="no network ceiling"):
            sb.run_once("1")


def test_policy_is_for_the_embedded_server():
    with pytest.raises(ValueError, match="embedded server"):
        Sandbox(url="http://127.0.0.1:1", policy="policy.toml")


def test_network_events_are_read():
    r = SandboxResult._from_json({"stdout": "", "stderr": "", "exit_code": 0, "error": None, "network_events": [
        {"time": "2026-12-01T12:00:00Z", "host": "pypi.org", "verdict": "denied", "rule": "default:deny",
         "bytes_out": 0, "bytes_in": 0}]})
    assert r.network_events[0]["rule"] == "default:deny"
