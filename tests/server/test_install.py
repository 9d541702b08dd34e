"""`mcp-interp install claude`: the files Claude Code reads, idempotent, and a server entry that starts
from anywhere."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

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


# Refusals (issue 26, item 13): in-process, so a permission denial can be simulated where the tests run as root
ROOT = os.geteuid() == 0  # root reads and writes through any mode bits


def run_install(monkeypatch, capsys, home, *args):
    from mcp_interp.server.cli import main

    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MCP_INTERP_STORE", raising=False)
    rc = main(["install", "claude", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(rc, err, *words):
    """Exit 1 with one line naming the problem and the fix: no traceback, no raw exception class."""
    assert rc == 1 and err.count("\n") == 1 and "Fix:" in err, err
    assert "Traceback" not in err and not re.search(r"[A-Z]\w*Error\b", err), err
    for w in words:
        assert w in err, (w, err)


def deny_read(monkeypatch, path):
    if not ROOT:
        path.chmod(0)
        return
    real = Path.open

    def refusing_open(self, *a, **k):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, "open", refusing_open)


def deny_write(monkeypatch, directory):
    if not ROOT:
        directory.chmod(0o555)
        return
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: Path(p) != directory and real(p, mode, **k))


@pytest.fixture
def proj(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "home").mkdir()
    return tmp_path / "proj"


def test_a_directory_where_mcp_json_belongs_is_refused_with_a_fix(proj, monkeypatch, capsys):
    (proj / ".mcp.json").mkdir()
    rc, _, err = run_install(monkeypatch, capsys, proj.parent / "home", "--project", str(proj))
    assert_refused(rc, err, f"{proj / '.mcp.json'}: is a directory")
    assert not (proj / ".claude").exists()


@pytest.mark.parametrize("content, problem", [(b'\xff\xfe{"mcpServers": {}}', "is not UTF-8"),
                                              (b"[" * 100_000, "not readable JSON (nested too deeply)")])
def test_unreadable_json_is_refused_with_a_fix(proj, monkeypatch, capsys, content, problem):
    (proj / ".mcp.json").write_bytes(content)
    rc, _, err = run_install(monkeypatch, capsys, proj.parent / "home", "--project", str(proj))
    assert_refused(rc, err, ".mcp.json: " + problem)
    assert (proj / ".mcp.json").read_bytes() == content and not (proj / ".claude").exists()


def test_an_unreadable_config_is_refused_with_a_fix(proj, monkeypatch, capsys):
    (proj / ".mcp.json").write_text("{}")
    deny_read(monkeypatch, proj / ".mcp.json")
    rc, _, err = run_install(monkeypatch, capsys, proj.parent / "home", "--project", str(proj))
    assert_refused(rc, err, ".mcp.json: permission denied reading it")
    assert not (proj / ".claude").exists()


def test_a_file_named_claude_fails_before_anything_is_written(proj, monkeypatch, capsys):
    """.claude is a file: the skill cannot be written, so neither is .mcp.json (it was: a partial install)."""
    (proj / ".claude").write_text("")
    rc, _, err = run_install(monkeypatch, capsys, proj.parent / "home", "--project", str(proj))
    assert_refused(rc, err, f"{proj / '.claude'}: is a file where a directory is needed")
    assert sorted(p.name for p in proj.iterdir()) == [".claude"]


def test_a_directory_it_may_not_write_fails_before_anything_is_written(proj, monkeypatch, capsys):
    """.mcp.json could be written, the skill directory not: every target is checked before the first write."""
    (proj / ".claude").mkdir()
    deny_write(monkeypatch, proj / ".claude")
    rc, _, err = run_install(monkeypatch, capsys, proj.parent / "home", "--project", str(proj))
    assert_refused(rc, err, f"{proj / '.claude'}: permission denied")
    assert not (proj / ".mcp.json").exists() and list((proj / ".claude").iterdir()) == []


def test_a_symlinked_mcp_json_is_updated_through_the_link(proj, monkeypatch, capsys):
    (proj.parent / "dotfiles").mkdir()
    target = proj.parent / "dotfiles" / "mcp.json"
    target.write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}}))
    (proj / ".mcp.json").symlink_to(target)
    rc, out, err = run_install(monkeypatch, capsys, proj.parent / "home", "--project", str(proj))
    assert rc == 0, err
    assert (proj / ".mcp.json").is_symlink() and os.readlink(proj / ".mcp.json") == str(target)
    assert set(json.loads(target.read_text())["mcpServers"]) == {"other", "mcp-interp"}
    assert f"-> {target}" in out and [p.name for p in target.parent.iterdir()] == ["mcp.json"]  # no temp file left


@pytest.mark.parametrize("name", ["", "two words", "tab\there", "bell\x07", "zero\u200bwidth"])
def test_a_server_name_must_be_non_empty_without_spaces_or_control_characters(proj, monkeypatch, capsys, name):
    rc, _, err = run_install(monkeypatch, capsys, proj.parent / "home", "--project", str(proj), "--name", name)
    assert_refused(rc, err, "--name: ", repr(name))
    assert list(proj.iterdir()) == []


def test_duplicate_server_keys_are_refused_not_merged(proj, monkeypatch, capsys):
    text = '{"mcpServers": {"mcp-interp": {"command": "a"}, "mcp-interp": {"command": "b"}}}'
    (proj / ".mcp.json").write_text(text)
    rc, _, err = run_install(monkeypatch, capsys, proj.parent / "home", "--project", str(proj))
    assert_refused(rc, err, 'the key "mcp-interp" appears twice in mcpServers')
    assert (proj / ".mcp.json").read_text() == text and not (proj / ".claude").exists()


def test_new_files_get_the_usual_permissions(proj, monkeypatch, capsys):
    """A project's .mcp.json is shared (it was created 0600, the temporary file's mode)."""
    umask = os.umask(0o022)
    try:
        rc, _, err = run_install(monkeypatch, capsys, proj.parent / "home", "--project", str(proj))
    finally:
        os.umask(umask)
    assert rc == 0, err
    assert (proj / ".mcp.json").stat().st_mode & 0o777 == 0o644 and (proj / SKILL).stat().st_mode & 0o777 == 0o644
