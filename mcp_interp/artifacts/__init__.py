"""Artifact store: run directories, SQLite index, manifests, safetensors, plots.

Imports nothing else from mcp_interp (only the top-level __version__, lazily, for manifests).
`plots` is not imported here so that using the store does not load matplotlib; `remote` imports fsspec and its
backend only when a store URL is opened.
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
from .remote import (
                     StoreAccessDenied,
                     StoreBackendMissing,
                     StoreBucketMissing,
                     StoreCredentialsMissing,
                     StoreUnavailable,
                     StoreUnreachable,
                     is_url,
)
from .store import ArtifactStore, RunHandle, mirror_root, params_hash

__all__ = [
    "ArtifactStore", "RunHandle", "params_hash", "sanitize_component", "to_jsonable", "is_url", "mirror_root",
    "RunRecord", "JobRecord", "RunStatus", "JobStatus", "JOB_TERMINAL",
    "StoreError", "RunNotFound", "RunNotComplete", "UnsafePath", "ArtifactFileNotFound",
    "StoreUnavailable", "StoreBackendMissing", "StoreCredentialsMissing", "StoreBucketMissing", "StoreUnreachable",
    "StoreAccessDenied",
]
