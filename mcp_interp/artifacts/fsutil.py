"""Filesystem helpers: atomic writes, strict JSON, safe path components and joins."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from .records import UnsafePath

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._+=-]+")
_MAX_COMPONENT = 96


def utc_now() -> str:
    """Fixed-width ISO-8601 UTC with microseconds: sorts lexicographically in time order."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sanitize_component(name: str | None) -> str:
    """A readable, filesystem-safe directory name for a task / model / tool id.

    `toy/tiny-random` -> `toy__tiny-random`, `hf:/x/y` -> `hf-__x__y`. The index keeps the exact ids,
    so a (rare) clash of two ids onto one folder name only puts their runs side by side.
    """
    if not name:
        return "_"
    parts = [p for p in str(name).replace("\\", "/").split("/") if p]
    safe = "__".join(_SAFE_CHARS.sub("_", p.replace(":", "-")) for p in parts) or "_"
    if safe.startswith("."):  # dot-dirs are the store's own (.staging) and hidden to people
        safe = "_" + safe
    if len(safe) > _MAX_COMPONENT:  # long local paths: keep the informative tail, plus a hash
        digest = hashlib.sha256(str(name).encode()).hexdigest()[:8]
        safe = f"{digest}-{safe[-(_MAX_COMPONENT - 9):]}"
    return safe


def to_jsonable(obj: Any) -> Any:
    """Convert results to strict JSON: numpy/torch scalars and arrays, pydantic models,
    dataclasses, paths. Non-finite floats become null (JSON has no NaN; JS clients reject it)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, (Path, PurePosixPath)):
        return str(obj)
    if hasattr(obj, "model_dump"):  # pydantic v2
        return to_jsonable(obj.model_dump(mode="json"))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return to_jsonable(obj.detach().cpu().tolist() if hasattr(obj, "detach") else obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    raise TypeError(f"cannot store a {type(obj).__name__} as JSON")


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, sort_keys=False, allow_nan=False)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, dumps(obj).encode("utf-8"))


def check_relpath(relpath: str) -> PurePosixPath:
    """Reject anything that is not a plain relative path below a directory."""
    if not isinstance(relpath, str) or not relpath.strip():
        raise UnsafePath("empty file path; give a path relative to the run directory, e.g. 'result.json'")
    if "\x00" in relpath:
        raise UnsafePath("file path contains a NUL byte")
    norm = relpath.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsafePath(f"absolute path {relpath!r} refused: give a path relative to the run directory")
    pure = PurePosixPath(norm)
    if any(part == ".." for part in pure.parts):
        raise UnsafePath(f"path {relpath!r} refused: '..' is not allowed")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        raise UnsafePath(f"path {relpath!r} names no file")
    return PurePosixPath(*parts)


def safe_join(base: Path, relpath: str) -> Path:
    """Join `relpath` below `base`, refusing escapes, including through symlinks."""
    rel = check_relpath(relpath)
    base_real = Path(os.path.realpath(base))
    target = Path(os.path.realpath(base_real / rel))
    if target != base_real and not target.is_relative_to(base_real):
        raise UnsafePath(f"path {relpath!r} resolves outside the run directory (symlink?); refused")
    return target


def tree_files(base: Path) -> list[str]:
    """Regular files below `base` as sorted posix relative paths; skips temp files and symlinks."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            if os.path.islink(full) or (fn.startswith(".") and fn.endswith(".tmp")):
                continue
            out.append(Path(os.path.relpath(full, base)).as_posix())
    return sorted(out)


def tree_size(base: Path) -> int:
    total = 0
    for dirpath, _dirs, filenames in os.walk(base):
        for fn in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, fn)).st_size
            except OSError:
                pass
    return total
