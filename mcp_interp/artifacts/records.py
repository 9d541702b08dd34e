"""Records kept in the artifact index, and the store's errors.

Plain pydantic models so the tools layer can return them (or embed them) in MCP output schemas.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

RunStatus = Literal["running", "complete", "failed", "interrupted"]
# One status vocabulary for jobs, from the job manager through the index to the published JobView.
JobStatus = Literal["complete", "running", "queued", "failed", "cancelled", "interrupted"]
JOB_TERMINAL: frozenset[str] = frozenset({"complete", "failed", "cancelled", "interrupted"})


class StoreError(Exception):
    """Base class of the artifact store's errors; messages are written for an agent to act on."""


class RunNotFound(StoreError, KeyError):
    """No run with this id in the index (KeyError so `except KeyError` callers keep working)."""

    def __str__(self) -> str:  # KeyError would repr() the message, adding quotes
        return str(self.args[0]) if self.args else "run not found"


class RunNotComplete(StoreError):
    """The run exists but has no result to read (still running, failed or interrupted)."""


class UnsafePath(StoreError, ValueError):
    """A requested file path points outside its run directory or is malformed."""


class ArtifactFileNotFound(StoreError, FileNotFoundError):
    """The path is safe but no such file exists in the run."""


class RunRecord(BaseModel):
    """One row of the runs index."""

    run_id: str
    tool: str
    task: str
    model: str
    params_hash: str
    status: RunStatus
    created: str = Field(description="ISO-8601 UTC")
    finished: str | None = None
    seconds: float | None = None
    rel_path: str = Field(description="run directory relative to the store root")
    key_metrics: dict[str, Any] = Field(default_factory=dict)
    summary: str | None = None
    task_hash: str | None = None
    weight_hash: str | None = None
    error: str | None = None


class JobRecord(BaseModel):
    """The persisted state of one job (see mcp_interp.runtime.jobs)."""

    job_id: str
    kind: str
    description: str = ""
    key: str | None = None
    status: JobStatus
    progress: float = 0.0
    message: str = ""
    created: str
    started: str | None = None
    finished: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    owner: str | None = Field(None, description="the server process running it (see the index's owners)")
