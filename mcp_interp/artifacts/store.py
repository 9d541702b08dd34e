"""The artifact store: `{root}/{task}/{model}/{tool}/{run_id}/` plus a SQLite index.

A run is written into `{root}/.staging/{run_id}/` and renamed into place only by `finish()` (with
`manifest.json` written last inside staging), so a directory in the layout that holds
`manifest.json` is always a complete run; a crash leaves only a staging dir (ignored) and an index row
that `mark_running_interrupted()` turns into `interrupted`. Failed runs are published too, for
debugging, with `failure.json` instead of `manifest.json`. Publishing also writes a pointer
`{store}/.runs/{run_id}.json` (`{"rel_path": ...}`), by which another process (a second server, a Ray worker
with its own index) finds the run: `get_run` reads it on an index miss and adopts the run.

The root may be a local directory (a shared filesystem too) or an fsspec URL (`s3://bucket/prefix`, `gs://...`;
`memory://` in tests; see `remote.py`). For a URL, `root` is a local cache directory
(`$MCP_INTERP_STORE_CACHE` or `~/.cache/mcp-interp`, then `stores/<16 hex of sha256(url)>`) holding the staging dir,
a read mirror of runs and, by default, the index: SQLite never sits on network storage (`index_path` puts it
elsewhere, e.g. a worker's own disk). Publishing uploads the staged files to `{url}/{rel_path}/`, the marker
(`manifest.json` / `failure.json`) last, then moves staging into the mirror; reading a run downloads it into the
mirror once (a published run is immutable), so every reader below returns local paths as for a local store.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from . import provenance
from .fsutil import (
    atomic_write_bytes,
    atomic_write_json,
    check_relpath,
    dumps,
    safe_join,
    sanitize_component,
    tree_files,
    tree_size,
    utc_now,
)
from .index import SqliteIndex
from .records import ArtifactFileNotFound, JobRecord, RunNotComplete, RunNotFound, RunRecord, StoreError, UnsafePath
from .remote import RemoteRoot, is_url, local_path_of

MANIFEST, FAILURE, RESULT = "manifest.json", "failure.json", "result.json"
STAGING = ".staging"
POINTERS = ".runs"  # {run_id}.json -> {"rel_path": ...}, written at publish, read on an index miss
PREVIEW = "preview.png"  # the small copy of a run's main figure that results carry as an image
INTERRUPTED_MSG = "interrupted: the server stopped before this run finished; run the request again"
# manifest keys the store writes itself; `manifest_extra` may not set them
_RESERVED = frozenset({"format", "run_id", "tool", "tool_version", "task", "model", "params", "params_hash", "seed",
                       "environment", "status", "timings", "files", "key_metrics", "summary", "error"})
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
log = logging.getLogger(__name__)


def params_hash(params: Mapping[str, Any]) -> str:
    """Stable hash of tool parameters: sorted-key compact JSON -> sha256 -> 16 hex."""
    text = json.dumps(json.loads(dumps(dict(params), indent=None)), sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class RunHandle:
    """Writes the files of one run into its staging directory; `finish()` publishes it.

    Usable as a context manager: leaving the block by an exception (or without `finish()`) records
    the run as failed.
    """

    def __init__(self, store: ArtifactStore, record: RunRecord, staging: Path,
                 manifest_base: dict[str, Any]):
        self.store, self.record, self.staging_dir = store, record, staging
        self._base = manifest_base
        self._t0 = time.monotonic()
        self.state = "open"  # open | complete | failed

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def final_dir(self) -> Path:
        """Where the run lives once published (for a remote store, its local mirror)."""
        return self.store.root / self.record.rel_path

    def path(self, name: str) -> Path:
        """Where file `name` (may contain sub-folders) goes in staging; its parent exists."""
        if self.state != "open":
            raise StoreError(f"run {self.run_id} is already {self.state}; cannot write {name!r}")
        target = safe_join(self.staging_dir, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_bytes(self, name: str, data: bytes) -> Path:
        target = self.path(name)
        atomic_write_bytes(target, data)
        return target

    def write_json(self, name: str, obj: Any) -> Path:
        target = self.path(name if name.endswith(".json") else name + ".json")
        atomic_write_json(target, obj)
        return target

    def write_tensors(self, name: str, tensors: Mapping[str, Any],
                      metadata: Mapping[str, str] | None = None) -> Path:
        import torch
        from safetensors.torch import save

        clean, seen = {}, set()
        for key, t in tensors.items():
            t = torch.as_tensor(t).detach().to("cpu").contiguous()
            ptr = t.untyped_storage().data_ptr()
            # safetensors refuses shared or partially-viewed storage: copy those
            if ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            clean[str(key)] = t
        meta = {str(k): str(v) for k, v in (metadata or {}).items()} or None
        fname = name if name.endswith(".safetensors") else name + ".safetensors"
        return self.write_bytes(fname, save(clean, metadata=meta))

    def save_figure(self, name: str, fig: Any, dpi: int = 120) -> Path:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        if "matplotlib.pyplot" in sys.modules:  # free pyplot-managed figures; no-op otherwise
            sys.modules["matplotlib.pyplot"].close(fig)
        return self.write_bytes(name if name.endswith(".png") else name + ".png", buf.getvalue())

    def _manifest(self, status: str, **extra: Any) -> dict[str, Any]:
        finished = utc_now()
        files = {f: (self.staging_dir / f).stat().st_size for f in tree_files(self.staging_dir)}
        return {**self._base, "status": status, **extra,
                "timings": {"created": self.record.created, "finished": finished,
                            "seconds": round(time.monotonic() - self._t0, 4)},
                "files": files}

    def finish(self, result: Mapping[str, Any], metrics: Mapping[str, Any] | None = None,
               summary: str | None = None) -> RunRecord:
        """Write result.json and manifest.json, publish the run, mark it complete. Returns its record."""
        if self.state != "open":
            raise StoreError(f"run {self.run_id} is already {self.state}")
        atomic_write_json(self.path(RESULT), result)
        if summary is None and isinstance(result.get("summary"), str):
            summary = result["summary"]
        metrics = json.loads(dumps(dict(metrics or {}), indent=None))
        manifest = self._manifest("complete", key_metrics=metrics, summary=summary)
        atomic_write_json(self.path(MANIFEST), manifest)  # last file: its presence means complete
        self.store._publish(self.staging_dir, self.record, MANIFEST)
        self.state = "complete"
        self.record = self.record.model_copy(update=dict(
            status="complete", finished=manifest["timings"]["finished"],
            seconds=manifest["timings"]["seconds"], key_metrics=metrics, summary=summary))
        self.store.index.upsert_run(self.record)
        return self.record

    def fail(self, error: str) -> RunRecord:
        """Record the run as failed; what was written stays (as failure.json + files) for debugging."""
        if self.state != "open":
            return self.record
        # a finish() whose publish failed left its manifest in staging: published with it, the run would read complete
        (self.staging_dir / MANIFEST).unlink(missing_ok=True)
        manifest = self._manifest("failed", error=error)
        atomic_write_json(self.path(FAILURE), manifest)
        try:
            self.store._publish(self.staging_dir, self.record, FAILURE)
        except (OSError, StoreError) as e:
            log.warning("failed run %s not published (%s); its files stay in staging", self.run_id, e)
        self.state = "failed"
        self.record = self.record.model_copy(update=dict(
            status="failed", finished=manifest["timings"]["finished"],
            seconds=manifest["timings"]["seconds"], error=error))
        self.store.index.upsert_run(self.record)
        return self.record

    def __enter__(self) -> RunHandle:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.state == "open":
            self.fail(f"{exc_type.__name__}: {exc}" if exc_type else "run ended without finish()")
        return False


class ArtifactStore:
    """Runs on disk (or object storage) and their index. `create_run` opens a run in staging (a `RunHandle` to write
    files into); `finish` publishes it under `{root}/{task}/{model}/{tool}/{run_id}/` with its manifest; `find_cached`
    answers the run cache; `resolve_file` / `list_files` read a run's files safely (never outside its directory). Jobs
    are recorded here too, so a restarted server knows what finished. See docs/architecture.md §3.

    `root`: a local directory, or an fsspec URL (then `url` is that URL, `remote` its `RemoteRoot`, and `root` the
    local cache directory under `cache_dir`); `index_path`: where the SQLite index lives (a local file; default
    `{root}/index.sqlite`); `storage_options`: fsspec options for a URL (default: JSON in MCP_INTERP_STORE_OPTIONS).
    A URL is probed here, so a store that cannot be used fails now with a `StoreUnavailable` naming the fix.
    `storage_options` (attribute) holds the options in use, for a worker opening the same URL; `manifest_extra` is
    merged into every manifest this store writes (a Ray worker records its host and ids)."""

    def __init__(self, root: str | os.PathLike[str], *, index_path: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None,
                 storage_options: Mapping[str, Any] | None = None):
        self.url: str | None = None
        self.remote: RemoteRoot | None = None
        if is_url(root):
            self.remote = RemoteRoot(str(root), storage_options)
            self.remote.probe()  # before any work: a bad URL, bucket, endpoint or credentials fail the start
            self.url = self.remote.url
            self.root = mirror_root(self.url, cache_dir)
        else:
            self.root = local_path_of(root)
        # the options in use (argument or env), for a worker to open the same store: they may hold credentials
        self.storage_options: dict[str, Any] | None = dict(self.remote.options) if self.remote else None
        self.root.mkdir(parents=True, exist_ok=True)
        index_file = Path(index_path).expanduser().absolute() if index_path else self.root / "index.sqlite"
        index_file.parent.mkdir(parents=True, exist_ok=True)
        # a missing index is rebuilt from the published runs (for a URL: one listing of the remote)
        lost = not index_file.exists() and (self.remote is not None or any(self._published_dirs()))
        self.index = SqliteIndex(index_file)
        self.owner: str | None = None  # the server process writing runs (set by its job manager)
        self.manifest_extra: dict[str, Any] = {}
        if lost:
            self.rebuild_index()

    @classmethod
    def from_env(cls, default: str | os.PathLike[str] = "./artifacts", **kwargs: Any) -> ArtifactStore:
        return cls(os.environ.get("MCP_INTERP_STORE") or default, **kwargs)

    @property
    def location(self) -> str:
        """The store as a person names it: its URL, or its local directory."""
        return self.url or str(self.root)

    params_hash = staticmethod(params_hash)

    # -- writing ------------------------------------------------------------------------------
    def create_run(self, tool: str, task: str, model: str, params: Mapping[str, Any],
                   seed: int | None = None, model_info: Mapping[str, Any] | None = None,
                   task_hash: str | None = None, tool_version: str | None = None) -> RunHandle:
        info = json.loads(dumps(dict(model_info or {}), indent=None))
        extra = json.loads(dumps(dict(self.manifest_extra), indent=None))
        if clash := sorted(set(extra) & _RESERVED):
            raise StoreError(f"manifest_extra may not set {clash}: the store writes those manifest keys itself; "
                             "put the extra data under another key (e.g. 'worker')")
        run_id = self._new_run_id()
        rel = "/".join((sanitize_component(task), sanitize_component(model),
                        sanitize_component(tool), run_id))
        rec = RunRecord(run_id=run_id, tool=tool, task=task, model=model,
                        params_hash=params_hash(params), status="running", created=utc_now(),
                        rel_path=rel, task_hash=task_hash, weight_hash=info.get("weight_hash"))
        staging = self.root / STAGING / run_id
        self.index.upsert_run(rec, owner=self.owner)  # owned before its staging dir exists: never swept live
        staging.mkdir(parents=True)
        base = {"format": 1, "run_id": run_id, "tool": tool,
                "tool_version": tool_version or provenance.tool_version(),
                "task": {"name": task, "hash": task_hash},
                "model": {**info, "id": model, "weight_hash": info.get("weight_hash")},
                "params": json.loads(dumps(dict(params), indent=None)),
                "params_hash": rec.params_hash, "seed": seed,
                "environment": provenance.environment(), **extra}
        return RunHandle(self, rec, staging, base)

    def _new_run_id(self) -> str:
        while True:  # time-sortable to the second, random suffix for uniqueness
            run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
            if not self.index.run_exists(run_id) and not (self.root / STAGING / run_id).exists():
                return run_id

    def _publish(self, staging: Path, rec: RunRecord, marker: str) -> None:
        """Publish a staged run whose `marker` (manifest.json or failure.json) is written, then its pointer."""
        final = self.root / rec.rel_path
        if self.remote is None:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, final)  # atomic on one filesystem; fails if `final` exists
        else:
            self.remote.upload_run(staging, rec.rel_path, marker)  # marker last: published once it lands
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, final)  # staging becomes the local mirror
            except OSError as e:  # the remote copy is the run: the mirror downloads on first read
                log.warning("run %s published to %s but not mirrored locally (%s)", rec.run_id, self.url, e)
        try:
            self._write_pointer(rec.run_id, rec.rel_path)
        except (OSError, StoreError) as e:  # the run is published; only other processes' lookups by id miss it
            log.warning("run %s published without its pointer %s/%s.json (%s)", rec.run_id, POINTERS, rec.run_id, e)

    def _write_pointer(self, run_id: str, rel_path: str) -> None:
        data = json.dumps({"rel_path": rel_path}).encode("utf-8")
        if self.remote is None:
            atomic_write_bytes(self.root / POINTERS / f"{run_id}.json", data)
        else:
            self.remote.write_bytes(f"{POINTERS}/{run_id}.json", data)

    # -- reading ------------------------------------------------------------------------------
    def get_run(self, run_id: str) -> RunRecord:
        """The run's record from the index; on a miss, a run another process published (found by its pointer)
        is adopted into this index."""
        rec = self.index.get_run(run_id) or self._adopt_by_pointer(run_id)
        if rec is None:
            raise RunNotFound(f"no run with id {run_id!r} in the store at {self.location}; "
                              "use list_runs to see the stored runs")
        return rec

    def adopt_run(self, record: RunRecord | Mapping[str, Any]) -> RunRecord:
        """Record in this index a run another process (e.g. a worker with its own index) wrote to this store."""
        rec = record if isinstance(record, RunRecord) else RunRecord.model_validate(record)
        if not _valid_rel_path(rec.rel_path, rec.run_id):
            raise StoreError(f"cannot adopt run {rec.run_id!r}: rel_path {rec.rel_path!r} is not "
                             "'{task}/{model}/{tool}/{run_id}' of that run")
        self.index.upsert_run(rec)
        return rec

    def _adopt_by_pointer(self, run_id: str) -> RunRecord | None:
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            return None  # never a file name built from an arbitrary id
        name = f"{POINTERS}/{run_id}.json"
        if self.remote is None:
            p = self.root / name
            raw = p.read_bytes() if p.is_file() else None
        else:
            raw = self.remote.read_bytes(name)
        try:
            rel = json.loads(raw)["rel_path"] if raw is not None else None
        except (ValueError, KeyError, TypeError):
            return None
        if not _valid_rel_path(rel, run_id):
            return None
        rec = self._published_record(rel)
        if rec is None or rec.run_id != run_id:
            return None
        self.index.upsert_run(rec)
        return rec

    def list_runs(self, task: str | None = None, model: str | None = None, tool: str | None = None,
                  status: str | None = None, limit: int | None = 50) -> list[RunRecord]:
        return self.index.query_runs(limit=limit, task=task, model=model, tool=tool, status=status)

    def find_cached(self, tool: str, task: str, model: str, params_hash: str,
                    task_hash: str | None = None, weight_hash: str | None = None) -> RunRecord | None:
        """Newest complete run with the same inputs whose files are still there (on disk, in the mirror or on the
        remote)."""
        for rec in self.index.query_runs(limit=5, tool=tool, task=task, model=model,
                                         params_hash=params_hash, status="complete",
                                         task_hash=task_hash, weight_hash=weight_hash):
            if (self.root / rec.rel_path / MANIFEST).is_file() or (
                    self.remote is not None and self.remote.exists(f"{rec.rel_path}/{MANIFEST}")):
                return rec
        return None

    def run_dir(self, run_id: str) -> Path:
        """The run's local directory (for a remote store: its mirror, downloaded on first use)."""
        return self._local_dir(self.get_run(run_id))

    def _local_dir(self, rec: RunRecord) -> Path:
        d = self.root / rec.rel_path
        if self.remote is not None and rec.status in ("complete", "failed") and not _has_marker(d):
            self.remote.download_run(rec.rel_path, d)  # whole or not at all; a published run never changes
        return d

    def read_result(self, run_id: str) -> dict[str, Any]:
        rec = self.get_run(run_id)
        if rec.status != "complete":
            why = f": {rec.error}" if rec.error else ""
            raise RunNotComplete(f"run {run_id} is {rec.status}{why}; it has no result")
        return json.loads((self._local_dir(rec) / RESULT).read_text("utf-8"))

    def read_manifest(self, run_id: str) -> dict[str, Any]:
        d = self.run_dir(run_id)
        for name in (MANIFEST, FAILURE):
            if (d / name).is_file():
                return json.loads((d / name).read_text("utf-8"))
        raise RunNotComplete(f"run {run_id} has no manifest (status {self.get_run(run_id).status})")

    def list_files(self, run_id: str) -> list[str]:
        d = self.run_dir(run_id)
        return tree_files(d) if d.is_dir() else []

    def resolve_file(self, run_id: str, relpath: str) -> Path:
        """Absolute path of a file inside a run; raises UnsafePath for anything that escapes it."""
        check_relpath(relpath)
        d = self.run_dir(run_id)
        if not d.is_dir():
            raise ArtifactFileNotFound(f"run {run_id} has no files yet (status "
                                       f"{self.get_run(run_id).status})")
        target = safe_join(d, relpath)
        if not target.is_file():
            avail = ", ".join(self.list_files(run_id)[:20])
            raise ArtifactFileNotFound(f"run {run_id} has no file {relpath!r}; files: {avail}")
        return target

    def size_bytes(self) -> int:
        return tree_size(self.root)

    # -- recovery -----------------------------------------------------------------------------
    def _published_dirs(self):
        for p in self.root.glob("*/*/*/*"):
            rel = p.relative_to(self.root)
            if p.is_dir() and not any(part.startswith(".") for part in rel.parts):
                if (p / MANIFEST).is_file() or (p / FAILURE).is_file():
                    yield p

    def _record_from_disk(self, d: Path) -> RunRecord | None:
        name = MANIFEST if (d / MANIFEST).is_file() else FAILURE
        try:
            raw = (d / name).read_bytes()
        except OSError:
            return None
        return _record_from_manifest(raw, name, d.relative_to(self.root).as_posix())

    def _published_record(self, rel_path: str) -> RunRecord | None:
        """The record of the run published at `rel_path` (local dir or mirror first, then the remote), or None."""
        d = self.root / rel_path
        if _has_marker(d) or self.remote is None:
            return self._record_from_disk(d) if d.is_dir() else None
        for name in (MANIFEST, FAILURE):
            raw = self.remote.read_bytes(f"{rel_path}/{name}")
            if raw is not None:
                return _record_from_manifest(raw, name, rel_path)
        return None

    def rebuild_index(self) -> int:
        """Reconstruct the runs table from the published manifests (on disk, or listed on the remote). Returns the
        number of runs."""
        if self.remote is None:
            disk = [r for r in map(self._record_from_disk, self._published_dirs()) if r is not None]
        else:
            disk = [r for r in (_record_from_manifest(raw, name, rel) for rel, name, raw in self.remote.published())
                    if r is not None]
        ids = {r.run_id for r in disk}
        keep = [r for r in self.index.query_runs(limit=None)
                if r.run_id not in ids and r.status in ("running", "interrupted")]
        self.index.replace_all_runs(disk + keep)
        return len(disk)

    def mark_running_interrupted(self, alive: set[str] | None = None) -> int:
        """At startup: runs left 'running' by a dead server become 'interrupted' (or complete/failed
        if their publish happened but the index update did not); runs of the `alive` owners (other
        servers on this store) are left alone. Returns how many changed."""
        n = 0
        owners = self.index.running_runs_owned()
        for rec in self.index.query_runs(limit=None, status="running"):
            if alive and owners.get(rec.run_id) in alive:
                continue
            disk = self._published_record(rec.rel_path)
            if disk is not None:
                self.index.upsert_run(disk)
            else:
                self.index.set_run_status(rec.run_id, "interrupted", INTERRUPTED_MSG)
            n += 1
        return n

    def sweep_staging(self, alive: set[str] | None = None, grace_s: float = 120.0) -> int:
        """At startup: delete the staging dirs of runs no live server is writing (debris of a crash).
        A dir whose run is 'running' under an `alive` owner stays, and so does a young dir with no index
        row. Returns how many were removed."""
        live = {rid for rid, owner in self.index.running_runs_owned().items() if owner in (alive or set())}
        n, now = 0, time.time()
        for d in (self.root / STAGING).glob("*"):
            if not d.is_dir() or d.name in live:
                continue
            try:
                young = now - d.stat().st_mtime < grace_s
            except OSError:
                continue
            exists, status, owner = self.index.run_owner(d.name)  # read now: `live` is a snapshot
            if young and not exists:
                continue  # a run being created right now by some process
            if status == "running" and owner in (alive or set()):
                continue  # created by a live server after the snapshot

            shutil.rmtree(d, ignore_errors=True)
            n += 1
        return n

    def clean_staging(self, older_than_s: float = 86400.0) -> int:
        """Delete staging dirs of crashed runs older than `older_than_s`; returns how many."""
        n, now = 0, time.time()
        for d in (self.root / STAGING).glob("*"):
            if d.is_dir() and now - d.stat().st_mtime > older_than_s:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        return n

    # -- jobs (persisted for mcp_interp.runtime.jobs) -------------------------------------------
    def save_job(self, record: JobRecord) -> None:
        self.index.save_job(record)

    def load_job(self, job_id: str) -> JobRecord | None:
        return self.index.load_job(job_id)

    def load_jobs(self, status: str | None = None, limit: int | None = 100) -> list[JobRecord]:
        return self.index.load_jobs(status=status, limit=limit)

    def interrupt_jobs(self, message: str, alive: set[str] | None = None) -> int:
        """Mark queued/running jobs as interrupted unless an `alive` owner runs them (called when a job manager
        starts)."""
        return self.index.interrupt_jobs(message, utc_now(), alive)


def mirror_root(url: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local directory of a remote store: `{cache}/stores/<16 hex of sha256(url)>`, the cache being `cache_dir`,
    else $MCP_INTERP_STORE_CACHE, else ~/.cache/mcp-interp."""
    base = cache_dir or os.environ.get("MCP_INTERP_STORE_CACHE") or Path.home() / ".cache" / "mcp-interp"
    digest = hashlib.sha256(url.rstrip("/").encode("utf-8")).hexdigest()[:16]
    return Path(base).expanduser().absolute() / "stores" / digest


def _has_marker(d: Path) -> bool:
    return (d / MANIFEST).is_file() or (d / FAILURE).is_file()


def _valid_rel_path(rel: Any, run_id: str) -> bool:
    """`rel` is `{task}/{model}/{tool}/{run_id}`: four plain components, none hidden, ending in this run's id."""
    if not isinstance(rel, str):
        return False
    try:
        parts = check_relpath(rel).parts
    except UnsafePath:
        return False
    return len(parts) == 4 and parts[3] == run_id and not any(p.startswith(".") for p in parts) and \
        "/".join(parts) == rel


def _record_from_manifest(raw: bytes | str, name: str, rel_path: str) -> RunRecord | None:
    """The index record of a published run from its marker file (`manifest.json` -> complete, `failure.json` ->
    failed). Keys it does not know (e.g. a worker's `manifest_extra`) are ignored."""
    try:
        m = json.loads(raw)
        t = m.get("timings", {})
        return RunRecord(
            run_id=m["run_id"], tool=m["tool"], task=m["task"]["name"], model=m["model"]["id"],
            params_hash=m["params_hash"], created=t["created"], finished=t.get("finished"),
            status="complete" if name == MANIFEST else "failed", seconds=t.get("seconds"),
            rel_path=rel_path, key_metrics=m.get("key_metrics") or {},
            summary=m.get("summary"), task_hash=m["task"].get("hash"),
            weight_hash=m["model"].get("weight_hash"), error=m.get("error"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable manifest: not indexed, never served as complete
