"""`mcp-interp install claude`: the server entry and the research skill where Claude Code looks for them.

Project scope (the default, `--project DIR`): `DIR/.mcp.json` and `DIR/.claude/skills/<name>/SKILL.md`. User
scope (`--user`): the `mcpServers` of `~/.claude.json` and `~/.claude/skills/<name>/SKILL.md`. The entry is a
stdio server started by this very interpreter with an absolute store path, so it works from any directory.
Idempotent: a file whose content would not change is not touched, and every other key of a JSON file is kept.
Plan, check, then write: every file is read and every target checked before the first write, so a refusal (one line:
the file, what is wrong, the fix) leaves everything as it was; each write is atomic and goes through a symlink.
Imports nothing heavy (no torch, no tools): it runs in a second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any


class InstallError(Exception):
    """A refusal: which file or option, what is wrong, what to do."""


def _refuse(where: Path | str, problem: str, fix: str) -> InstallError:
    """A refusal in the house style (as tools' field errors): `where: problem. Fix: fix`."""
    return InstallError(f"{where}: {problem}. Fix: {fix}")


SKILL_NAME = re.compile(r"^[a-z0-9-]{1,64}$")  # what Claude Code accepts as a skill name
MAX_DESCRIPTION = 1024


@dataclass
class PlannedWrite:
    """One file the installer would write: its new text, what --print shows of it, and whether it changes."""

    path: Path
    text: str
    shown: str
    status: str  # create, update or unchanged
    dest: Path  # where the write lands: `path`, or the file a symlink at `path` points to


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


AGAIN = "then run install again"


def _nearest_existing(path: Path) -> Path:
    """The closest ancestor of `path` that exists (`/` at worst): a file there blocks every directory below it."""
    return next(a for a in path.parents if os.path.lexists(a))


def _not_a_directory(blocker: Path, dest: Path) -> InstallError:
    return _refuse(blocker, f"is a file where a directory is needed (to write {dest})",
                   f"move or rename {blocker}, {AGAIN}")


def _os_refusal(path: Path, e: OSError, doing: str) -> InstallError:
    """An OSError met `doing` (reading, writing) `path`, as a refusal that says what to do about it."""
    if isinstance(e, IsADirectoryError):
        return _refuse(path, "is a directory, not a file", f"move the directory away, {AGAIN}")
    if isinstance(e, NotADirectoryError):
        return _not_a_directory(_nearest_existing(path), path)
    if isinstance(e, PermissionError):
        return _refuse(path, f"permission denied {doing} it", "fix the permissions of the file and its directory, "
                       "or install where you may write (--project DIR or --user)")
    return _refuse(path, f"{doing} it failed ({e.strerror or e})", f"fix the cause, {AGAIN}")


def _destination(path: Path) -> Path:
    """Where a write to `path` lands: a symlink (a config kept in a dotfiles repository) is written through, to the
    file it points to, never replaced by a plain file."""
    try:
        if not path.is_symlink():
            return path
    except OSError as e:
        raise _os_refusal(path, e, "reading") from None
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:  # a dangling link: create the file it names
        return Path(os.path.realpath(path))
    except OSError as e:
        raise _refuse(path, f"is a symlink that cannot be followed ({e.strerror or e})",
                      f"point it at a file or remove it, {AGAIN}") from None


def _read(path: Path) -> bytes | None:
    """The file's bytes, or None when there is none."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _os_refusal(path, e, "reading") from None


def _duplicates_recorded(found: list[tuple[str, dict]]):
    """An object_pairs_hook that builds dicts as json does but records each repeated key (with its object): json
    keeps the last silently, and rewriting the file would drop the other."""
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        obj: dict = {}
        for k, v in pairs:
            if k in obj:
                found.append((k, obj))
            obj[k] = v
        return obj
    return hook


def _parse_json(path: Path, raw: bytes) -> Any:
    """The JSON in `raw` (an empty file is `{}`), refusing text that is not UTF-8, not JSON, or has repeated keys."""
    fix = f"repair the file or move it away, {AGAIN}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _refuse(path, f"is not UTF-8 text (byte {e.start})", fix) from None
    found: list[tuple[str, dict]] = []
    try:
        data = json.loads(text.strip() or "{}", object_pairs_hook=_duplicates_recorded(found))
    except json.JSONDecodeError as e:
        raise _refuse(path, f"not valid JSON ({e})", fix) from None
    except RecursionError:
        raise _refuse(path, "not readable JSON (nested too deeply)", fix) from None
    if found:
        key, obj = found[0]
        servers = data.get("mcpServers") if isinstance(data, dict) else None
        where = "mcpServers" if obj is servers else "the top-level object" if obj is data else "a nested object"
        raise _refuse(path, f"the key {json.dumps(key)} appears twice in {where} (JSON keeps only the last)",
                      f"keep one of the two {json.dumps(key)} entries, {AGAIN}")
    return data


def _plan_json(path: Path, name: str, entry: dict[str, Any]) -> PlannedWrite:
    dest = _destination(path)
    raw = _read(dest)
    data: dict[str, Any] = {} if raw is None else _parse_json(path, raw)
    if not isinstance(data, dict) or not isinstance(data.get("mcpServers", {}), dict):
        raise _refuse(path, "expected a JSON object whose mcpServers is an object", "repair the file")
    servers = data.setdefault("mcpServers", {})
    status = "unchanged" if servers.get(name) == entry else ("update" if raw is not None else "create")
    servers[name] = entry
    shown = json.dumps({"mcpServers": {name: entry}}, indent=2)
    return PlannedWrite(path, json.dumps(data, indent=2) + "\n", shown, status, dest)


def _plan_text(path: Path, text: str) -> PlannedWrite:
    dest = _destination(path)
    old = _read(dest)  # bytes: a file that is not UTF-8 is simply replaced
    status = "unchanged" if old == text.encode("utf-8") else ("update" if old is not None else "create")
    return PlannedWrite(path, text, text, status, dest)


def plan_claude(project: Path | None, user: bool, store: Path, name: str = "mcp-interp",
                home: Path | None = None) -> list[PlannedWrite]:
    """Every file `install claude` writes, with its new content (nothing is written here)."""
    home = home or Path.home()
    base = home if user else (project or Path.cwd())
    config = home / ".claude.json" if user else base / ".mcp.json"
    plans = [_plan_json(config, name, server_entry(store))]
    for skill, text in bundled_skills().items():
        plans.append(_plan_text(base / ".claude" / "skills" / skill / "SKILL.md", text))
    return plans


def check_writable(dest: Path) -> None:
    """Refuse now what would stop writing `dest` later: a file where a directory must be (or be created), or a
    directory we may not create files in (the atomic write puts a temporary file beside `dest`)."""
    existing = _nearest_existing(dest)
    if not existing.is_dir():
        raise _not_a_directory(existing, dest)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _refuse(existing, f"permission denied creating files in it (to write {dest})",
                      "make the directory writable, or install where you may write (--project DIR or --user)")


def check_name(name: str) -> str:
    """The server's key in mcpServers: Claude Code shows it and `claude mcp` commands take it as one argument."""
    if not name or any(c.isspace() or unicodedata.category(c).startswith("C") for c in name):
        raise _refuse("--name", f"{name!r} is not a server name: it must be non-empty, without spaces or control "
                      "characters", "pass a name such as --name mcp-interp")
    return name


def _new_file_mode() -> int:
    """What open() would give a new file (mkstemp makes 0600: a project's .mcp.json is meant to be shared)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write(path: Path, text: str) -> None:
    """Atomically (a temporary file in the same directory, then os.replace: a crash never leaves half a config),
    keeping an existing file's permissions."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as e:
        raise _os_refusal(path, e, "writing") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _new_file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _os_refusal(path, e, "writing") from None
        raise


def default_store(project: Path | None, user: bool) -> Path:
    env = os.environ.get("MCP_INTERP_STORE")
    if env:
        return Path(env)
    return Path.home() / "mcp-interp-artifacts" if user else (project or Path.cwd()) / "artifacts"


def install_claude(store: str | None, project: str | None, user: bool, name: str = "mcp-interp",
                   print_only: bool = False) -> int:
    check_name(name)
    proj = Path(project).expanduser().absolute() if project else None
    if proj is not None and not proj.is_dir():
        raise _refuse("--project", f"{proj} is not a directory", "create it or name an existing project")
    root = (Path(store).expanduser() if store else default_store(proj, user)).absolute()
    plans = plan_claude(proj, user, root, name)
    for p in plans:  # every target checked before the first write: a refusal leaves everything as it was
        if p.status != "unchanged":
            check_writable(p.dest)
    for p in plans:
        if print_only:
            sys.stdout.write(f"# {p.path} ({'would ' + p.status if p.status != 'unchanged' else 'unchanged'})\n"
                             f"{p.shown.rstrip()}\n\n")
        else:
            if p.status != "unchanged":
                _write(p.dest, p.text)
            sys.stdout.write(f"{p.status:<9} {p.path}{f' -> {p.dest}' if p.dest != p.path else ''}\n")
    if not print_only:
        sys.stdout.write(f"Server {name!r} stores its runs in {root}. Start Claude Code in "
                         f"{'any project' if user else proj or Path.cwd()}; /mcp lists the server (a project's "
                         ".mcp.json asks for approval on first use).\n")
    return 0
