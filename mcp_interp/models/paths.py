"""The one rule for a path a client names (a local model, an SAE directory, a corpus file): resolved first, then
allowed only under the server's roots."""

from __future__ import annotations

import os
from pathlib import Path


def confine(raw: str | os.PathLike[str], roots: list[Path] | None) -> Path | None:
    """`raw` resolved (~ expanded, symlinks and '..' followed, so a link inside a root cannot lead out of it) when it
    lies under one of `roots` (None: anywhere), else None; None too for a path that cannot be resolved."""
    try:
        path = Path(raw).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # an unknown ~user, a symlink loop, a NUL byte
        return None
    if roots is not None and not any(path.is_relative_to(r) for r in roots):
        return None
    return path
