"""`mcp-interp install claude`: the server entry and the research skill where Claude Code looks for them.

Project scope (the default, `--project DIR`): `DIR/.mcp.json` and `DIR/.claude/skills/<name>/SKILL.md`. User
scope (`--user`): the `mcpServers` of `~/.claude.json` and `~/.claude/skills/<name>/SKILL.md`. The entry is a
stdio server started by this very interpreter with an absolute store path, so it works from any directory.
Idempotent: a file whose content would not change is not touched, and every other key of a JSON file is kept.
Imports nothing heavy (no torch, no tools): it runs in a second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any


class InstallError(Exception):
    """A refusal: which file or option, what is wrong, what to do."""

SKILL_NAME = re.compile(r"^[a-z0-9-]{1,64}$")  # what Claude Code accepts as a skill name
MAX_DESCRIPTION = 1024


@dataclass
class Planned:
    """One file the installer would write: its new text, what --print shows of it, and whether it changes."""

    path: Path
    text: str
    shown: str
    status: str  # create, update or unchanged


def package_root() -> Path:
    """The directory holding the running `mcp_interp` package."""
    return Path(__file__).resolve().parents[2]


def _found_without_pythonpath(python: str) -> bool:
    """Whether `python`, started from elsewhere without PYTHONPATH, imports this same package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # runs in a child process whose stdout we capture; never the server's own stdout
    probe = "import importlib.util as u, sys; s = u.find_spec('mcp_interp'); sys.stdout.write(s.origin if s else '')"
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(),
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    origin = out.stdout.strip()
    return bool(origin) and Path(origin).resolve().parent.parent == package_root()


def server_entry(store: Path) -> dict[str, Any]:
    """The stdio entry: this interpreter (unresolved, so a virtual environment stays in use) running this package's
    CLI on `store`; PYTHONPATH only when the interpreter would not find this package by itself (a source tree)."""
    python = str(Path(sys.executable).absolute())
    env = {} if _found_without_pythonpath(python) else {"PYTHONPATH": str(package_root())}
    return {"type": "stdio", "command": python, "args": ["-m", "mcp_interp.server.cli", "--store", str(store), "serve"],
            "env": env}


def front_matter(text: str) -> dict[str, str]:
    """The `key: value` lines between the leading `---` lines of a SKILL.md."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---" or "---" not in (ln.strip() for ln in lines[1:]):
        return {}
    end = next(i for i, ln in enumerate(lines[1:], 1) if ln.strip() == "---")
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:end]) if k.strip()}


def bundled_skills() -> dict[str, str]:
    """Skill name -> SKILL.md text for every skill shipped in mcp_interp/skills (checked as Claude Code wants it)."""
    out = {}
    for f in sorted((files("mcp_interp") / "skills").iterdir(), key=lambda f: f.name):
        if not f.name.endswith(".md"):
            continue
        text = f.read_text(encoding="utf-8")
        meta = front_matter(text)
        name, description = meta.get("name", ""), meta.get("description", "")
        if not SKILL_NAME.match(name) or not 0 < len(description) <= MAX_DESCRIPTION:
            raise ValueError(f"skills/{f.name}: front matter needs a name of lowercase letters, digits and hyphens "
                             f"(got {name!r}) and a description of 1..{MAX_DESCRIPTION} characters")
        out[name] = text
    return out


def _plan_json(path: Path, name: str, entry: dict[str, Any]) -> Planned:
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8") or "{}")
        except json.JSONDecodeError as e:
            raise InstallError(f"{path}: not valid JSON ({e}). Fix: repair or move the file, then run install again.")
        if not isinstance(data, dict) or not isinstance(data.get("mcpServers", {}), dict):
            raise InstallError(f"{path}: expected a JSON object whose mcpServers is an object. Fix: repair the file.")
    servers = data.setdefault("mcpServers", {})
    status = "unchanged" if servers.get(name) == entry else ("update" if path.exists() else "create")
    servers[name] = entry
    shown = json.dumps({"mcpServers": {name: entry}}, indent=2)
    return Planned(path, json.dumps(data, indent=2) + "\n", shown, status)


def _plan_text(path: Path, text: str) -> Planned:
    old = path.read_text(encoding="utf-8") if path.exists() else None
    status = "unchanged" if old == text else ("update" if old is not None else "create")
    return Planned(path, text, text, status)


def plan_claude(project: Path | None, user: bool, store: Path, name: str = "mcp-interp",
                home: Path | None = None) -> list[Planned]:
    """Every file `install claude` writes, with its new content (nothing is written here)."""
    home = home or Path.home()
    base = home if user else (project or Path.cwd())
    config = home / ".claude.json" if user else base / ".mcp.json"
    plans = [_plan_json(config, name, server_entry(store))]
    for skill, text in bundled_skills().items():
        plans.append(_plan_text(base / ".claude" / "skills" / skill / "SKILL.md", text))
    return plans


def _write(path: Path, text: str) -> None:
    """Atomically (a crash never leaves half a config), keeping an existing file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_store(project: Path | None, user: bool) -> Path:
    env = os.environ.get("MCP_INTERP_STORE")
    if env:
        return Path(env)
    return Path.home() / "mcp-interp-artifacts" if user else (project or Path.cwd()) / "artifacts"


def install_claude(store: str | None, project: str | None, user: bool, name: str = "mcp-interp",
                   print_only: bool = False) -> int:
    proj = Path(project).expanduser().absolute() if project else None
    if proj is not None and not proj.is_dir():
        raise InstallError(f"--project: {proj} is not a directory. Fix: create it or name an existing project.")
    root = (Path(store).expanduser() if store else default_store(proj, user)).absolute()
    plans = plan_claude(proj, user, root, name)
    for p in plans:
        if print_only:
            sys.stdout.write(f"# {p.path} ({'would ' + p.status if p.status != 'unchanged' else 'unchanged'})\n"
                             f"{p.shown.rstrip()}\n\n")
        else:
            if p.status != "unchanged":
                _write(p.path, p.text)
            sys.stdout.write(f"{p.status:<9} {p.path}\n")
    if not print_only:
        sys.stdout.write(f"Server {name!r} stores its runs in {root}. Start Claude Code in "
                         f"{'any project' if user else proj or Path.cwd()}; /mcp lists the server (a project's "
                         ".mcp.json asks for approval on first use).\n")
    return 0
