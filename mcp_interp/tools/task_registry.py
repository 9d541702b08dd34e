"""Built-in tasks plus tasks defined by clients, persisted next to the artifact store."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

from ..tasks.builtin import BUILTIN_TASKS
from ..tasks.spec import TaskSpec


def task_hash(spec: TaskSpec) -> str:
    blob = json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class TaskRegistry:
    def __init__(self, root: Path):
        self.dir = Path(root) / "_tasks"  # task names never start with '_', so no clash with runs
        self._lock = threading.Lock()
        self._user: dict[str, TaskSpec] = {}
        if self.dir.is_dir():
            for f in sorted(self.dir.glob("*.json")):
                try:
                    spec = TaskSpec.model_validate_json(f.read_text())
                except ValueError:
                    continue  # a corrupt file must not take the server down; it is simply not listed
                self._user[spec.name] = spec

    def names(self) -> list[str]:
        return sorted({*BUILTIN_TASKS, *self._user})

    def is_builtin(self, name: str) -> bool:
        return name in BUILTIN_TASKS and name not in self._user

    def get(self, name: str) -> TaskSpec | None:
        return self._user.get(name) or BUILTIN_TASKS.get(name)

    def put(self, spec: TaskSpec) -> None:
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(spec.model_dump_json(indent=2))
            os.replace(tmp, self.dir / f"{spec.name}.json")
            self._user[spec.name] = spec
