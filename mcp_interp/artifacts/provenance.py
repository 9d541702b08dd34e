"""What a manifest records about the software that produced a run. All lookups are cheap and
cached: package versions come from installed metadata (no heavy imports), git from one subprocess."""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import platform
import subprocess
import sys

PACKAGES = ("torch", "transformer_lens", "transformers", "mcp", "pydantic", "numpy", "safetensors")
_DIST_NAMES = {"transformer_lens": "transformer-lens"}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(_DIST_NAMES.get(name, name))
        except md.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def tool_version() -> str:
    # The top-level __version__ only: the store imports no other mcp_interp module.
    try:
        from mcp_interp import __version__

        return str(__version__)
    except Exception:  # pragma: no cover - store used outside the package
        try:
            return md.version("mcp-interp")
        except md.PackageNotFoundError:
            return "unknown"


@functools.lru_cache(maxsize=8)
def _git_commit(cwd: str) -> dict[str, object] | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=2)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=2)
        return {"commit": head.stdout.strip(),
                "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return None


def git_info() -> dict[str, object] | None:
    """Commit of the repository the server runs in (if any); cached per working directory."""
    return _git_commit(os.getcwd())


def environment() -> dict[str, object]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(terse=True),
        "packages": package_versions(),
        "git": git_info(),
    }
