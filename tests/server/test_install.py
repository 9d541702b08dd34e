"""`mcp-interp install claude`: the files Claude Code reads, idempotent, and a server entry that starts from anywhere."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from mcp import Client, StdioServerParameters

from mcp_helpers import call, finish

CLI = [sys.executable, "-m", "mcp_interp.server.cli"]
SKILL = ".claude/skills/interp-research-loop/SKILL.md"


def install(*args, home, cwd=None):
    env = {**os.environ, "HOME": str(home)}
    env.pop("MCP_INTERP_STORE", None)
    return subprocess.run([*CLI, "install", "claude", *args], capture_output=True, text=True, timeout=120, env=env,
                          cwd=cwd)


def snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_project_install_keeps_other_entries_and_is_idempotent(tmp_path):
    proj, home = tmp_path / "proj", tmp_path / "home"
    proj.mkdir(), home.mkdir()
    other = {"mcpServers": {"other": {"command": "x", "args": []}}, "note": "kept"}
    (proj / ".mcp.json").write_text(json.dumps(other))
    printed = install("--project", str(proj), "--print", home=home)
    assert printed.returncode == 0, printed.stderr
    assert json.loads((proj / ".mcp.json").read_text()) == other and not (proj / ".claude").exists()  # nothing written
    assert "would update" in printed.stdout and "would create" in printed.stdout and '"mcp-interp"' in printed.stdout
    out = install("--project", str(proj), home=home)
    assert out.returncode == 0, out.stderr
    config = json.loads((proj / ".mcp.json").read_text())
    assert config["note"] == "kept" and config["mcpServers"]["other"] == other["mcpServers"]["other"]
    entry = config["mcpServers"]["mcp-interp"]
    assert entry["type"] == "stdio" and os.path.isabs(entry["command"])
    assert entry["args"][-1] == "serve" and entry["args"][entry["args"].index("--store") + 1] == str(proj / "artifacts")
    skill = (proj / SKILL).read_text()
    meta = yaml.safe_load(skill.split("---\n")[1])
    assert meta["name"] == "interp-research-loop" and meta["description"]
    assert "run_baseline" in skill
    # again: nothing changes, not even a file's mtime; --print says so too
    before = snapshot(proj)
    again = install("--project", str(proj), home=home)
    assert again.returncode == 0 and again.stdout.count("unchanged") == 2
    assert snapshot(proj) == before
    assert install("--project", str(proj), "--print", home=home).stdout.count("(unchanged)") == 2
    assert list(home.iterdir()) == []  # project scope leaves the user's config alone


def test_user_install_writes_the_user_config_and_skill(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".claude.json").write_text(json.dumps({"numStartups": 3, "mcpServers": {"a": {"command": "b"}}}))
    out = install("--user", "--store", str(tmp_path / "store"), home=home, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    config = json.loads((home / ".claude.json").read_text())
    assert config["numStartups"] == 3 and config["mcpServers"]["a"] == {"command": "b"}
    assert str(tmp_path / "store") in config["mcpServers"]["mcp-interp"]["args"]
    assert (home / SKILL).is_file() and not (tmp_path / ".mcp.json").exists()


def test_install_refusals_exit_non_zero(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ".mcp.json").write_text("{not json")
    out = install("--project", str(bad), home=tmp_path)
    assert out.returncode == 1 and ".mcp.json: not valid JSON" in out.stderr
    assert (bad / ".mcp.json").read_text() == "{not json"
    out = install("--project", str(tmp_path / "missing"), home=tmp_path)
    assert out.returncode == 1 and "is not a directory" in out.stderr
    assert install("--project", str(bad), "--user", home=tmp_path).returncode == 2  # one scope at a time


@pytest.mark.anyio
async def test_the_written_entry_starts_a_working_server_from_elsewhere(tmp_path):
    """What Claude Code does with the entry: start command + args with env, in another directory, over stdio."""
    proj, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    proj.mkdir(), elsewhere.mkdir()
    assert install("--project", str(proj), home=tmp_path).returncode == 0
    entry = json.loads((proj / ".mcp.json").read_text())["mcpServers"]["mcp-interp"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | entry["env"]
    params = StdioServerParameters(command=entry["command"], args=entry["args"], env=env, cwd=str(elsewhere))
    async with Client(params) as c:
        assert "run_baseline" in {t.name for t in (await c.list_tools()).tools}
        res = await finish(c, await call(c, "run_baseline", {"model": "toy/tiny-random", "task": "induction", "n": 8}))
    assert (proj / "artifacts").is_dir() and not (elsewhere / "artifacts").exists()  # the store the entry names
    assert res["run_id"] in {p.name for p in (proj / "artifacts").rglob(res["run_id"])}
