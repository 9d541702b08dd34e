"""Artifact store: run directories, SQLite index, manifests, safetensors, plots.

Imports nothing else from mcp_interp (only the top-level __version__, lazily, for manifests).
`plots` is not imported here so that using the store does not load matplotlib.
"""

from .fsutil import sanitize_component, to_jsonable
from .records import (
                      JOB_TERMINAL,
                      ArtifactFileNotFound,
                      JobRecord,
                      JobStatus,
                      RunNotComplete,
                      RunNotFound,
                      RunRecord,
                      RunStatus,
                      StoreError,
                      UnsafePath,
)
from .store import ArtifactStore, RunHandle, params_hash

__all__ = [
    "ArtifactStore", "RunHandle", "params_hash", "sanitize_component", "to_jsonable",
    "RunRecord", "JobRecord", "RunStatus", "JobStatus", "JOB_TERMINAL",
    "StoreError", "RunNotFound", "RunNotComplete", "UnsafePath", "ArtifactFileNotFound",
]
