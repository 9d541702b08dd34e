"""Built-in tasks plus tasks defined by clients, persisted next to the artifact store."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

from .. import lazy
from ..tasks.builtin import BUILTIN_TASKS
from ..tasks.spec import TaskSpec

toy_tasks = lazy("mcp_interp.toymodels", "toy_tasks")  # the toy models import torch: on first use or by the warm-up


def builtin_tasks() -> dict[str, TaskSpec]:
    """The built-in tasks plus the tasks of the registered toy models (e.g. `planted`)."""
    out = {n: TaskSpec.model_validate(d) for n, d in toy_tasks().items()}
    out.update(BUILTIN_TASKS)  # a toy can never shadow a built-in
    return out


def task_hash(spec: TaskSpec) -> str:
    blob = json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class TaskRegistry:
    def __init__(self, root: Path):
        self.dir = Path(root) / "_tasks"  # task names never start with '_', so no clash with runs
        self._lock = threading.Lock()
        self._user: dict[str, TaskSpec] = {}
        self._builtin = builtin_tasks()
        if self.dir.is_dir():
            for f in sorted(self.dir.glob("*.json")):
                try:
                    spec = TaskSpec.model_validate_json(f.read_text())
                except ValueError:
                    continue  # a corrupt file must not take the server down; it is simply not listed
                if spec.name in self._builtin:
                    continue  # written by an older version that let a user task replace a built-in one
                self._user[spec.name] = spec

    def adopt(self, specs) -> None:
        """Know another process's user tasks, in memory only (a Ray worker gets the server's with each job)."""
        with self._lock:
            for spec in specs:
                if spec.name not in self._builtin:
                    self._user[spec.name] = spec

    def user_specs(self) -> dict[str, TaskSpec]:
        """The user-defined tasks by name (what a Ray worker needs besides the built-in ones)."""
        with self._lock:
            return dict(self._user)

    def names(self) -> list[str]:
        return sorted({*self._builtin, *self._user})

    def is_builtin(self, name: str) -> bool:
        return name in self._builtin

    def get(self, name: str) -> TaskSpec | None:
        return self._user.get(name) or self._builtin.get(name)

    def put(self, spec: TaskSpec) -> None:
        if spec.name in self._builtin:
            raise ValueError(f"{spec.name!r} is a built-in task; a user task cannot replace it")
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(spec.model_dump_json(indent=2))
            os.replace(tmp, self.dir / f"{spec.name}.json")
            self._user[spec.name] = spec
