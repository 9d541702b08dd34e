"""The fsspec side of an artifact store at a URL (`s3://bucket/prefix`, `gs://...`, `memory://...`).

`RemoteRoot` is what `ArtifactStore` needs from object storage and nothing more: a bounded probe at start, the upload
of a staged run with its marker file (`manifest.json` or `failure.json`) last, the download of a published run, small
JSON files (the `.runs/` pointers) and the listing of every marker for an index rebuild. Every failure becomes a
`StoreError` whose message names `--store` / `MCP_INTERP_STORE` and the fix.

fsspec and the backend (s3fs, gcsfs, adlfs) are imported only when a remote store is opened: a local store and the
server's start-up never load them. s3fs reads the usual AWS environment itself (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, and AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3: botocore >= 1.31 honours those, checked
with the installed s3fs 2026.9 / botocore 1.43), so no mapping is done here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from .fsutil import check_relpath, tree_files
from .records import StoreError, UnsafePath

OPTIONS_ENV = "MCP_INTERP_STORE_OPTIONS"
WHERE = "--store / MCP_INTERP_STORE"
PROBE_SECONDS = 15.0  # an unreachable endpoint fails the start within this, whatever the backend's own retries
# object stores: no directories to create, a bucket as the first path component, a listing cache to switch off
OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss"})
MARKERS = ("manifest.json", "failure.json")


class StoreUnavailable(StoreError):
    """The store named by --store / MCP_INTERP_STORE cannot be used; the message says why and what to do."""


class StoreBackendMissing(StoreUnavailable):
    """No fsspec backend for the URL's protocol (unknown protocol, or its package is not installed)."""


class StoreCredentialsMissing(StoreUnavailable):
    """The backend found no credentials."""


class StoreBucketMissing(StoreUnavailable):
    """The bucket (or container) of the URL does not exist."""


class StoreUnreachable(StoreUnavailable):
    """The storage endpoint did not answer (closed port, wrong host, network down, timeout)."""


class StoreAccessDenied(StoreUnavailable):
    """The credentials are refused or lack permission on the prefix."""


def is_url(root: Any) -> bool:
    """Whether `root` names remote storage: a string with a protocol other than file:// (a plain path is local)."""
    return isinstance(root, str) and "://" in root and not root.startswith(("file://", "local://"))


def local_path_of(root: str | os.PathLike[str]) -> Path:
    """The local path of a store root given as a path or a file:// URL."""
    if isinstance(root, str) and root.startswith(("file://", "local://")):
        root = root.split("://", 1)[1]
    return Path(root).expanduser().absolute()


def options_from_env() -> dict[str, Any]:
    """Storage options from MCP_INTERP_STORE_OPTIONS (a JSON object), or {}."""
    text = os.environ.get(OPTIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        opts = json.loads(text)
    except ValueError as e:
        raise StoreError(f"{OPTIONS_ENV} is not valid JSON ({e}); give an object such as "
                         '{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}') from None
    if not isinstance(opts, dict):
        raise StoreError(f"{OPTIONS_ENV} must be a JSON object of fsspec storage options, not {type(opts).__name__}")
    return opts


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


class RemoteRoot:
    """A store's directory tree on an fsspec filesystem: `path(rel)` is `{url}/{rel}`."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.protocol = self.url.split("://", 1)[0].lower()
        self.options = dict(options_from_env() if storage_options is None else storage_options)
        if self.protocol in OBJECT_STORES:
            # another process writes runs here: a cached listing would hide them (or their manifests) for good
            self.options.setdefault("use_listings_cache", False)
        cls = self._backend_class()
        try:
            self.fs = cls(**self.options)
        except Exception as e:  # bad options, or a backend that checks credentials at construction
            raise self.explain(e) from e
        self.base = cls._strip_protocol(self.url).rstrip("/")
        self.bucket = self.base.split("/", 1)[0] if self.protocol in OBJECT_STORES else None

    def __repr__(self) -> str:
        return f"RemoteRoot({self.url!r})"

    def _backend_class(self) -> type:
        import fsspec
        from fsspec.registry import known_implementations

        try:
            return fsspec.get_filesystem_class(self.protocol)
        except ImportError as e:
            impl = known_implementations.get(self.protocol, {})
            package = impl.get("class", "").split(".")[0]
            fix = f"pip install {package}" if package and package != "fsspec" else impl.get("err", str(e))
            raise StoreBackendMissing(
                f"the store URL {self.url!r} given by {WHERE} needs the fsspec backend for {self.protocol}://, "
                f"which is not installed ({impl.get('err') or e}): {fix}") from None
        except ValueError:
            known = ", ".join(sorted(p for p in ("s3", "gs", "az", "abfs", "memory", "sftp", "hdfs")
                                     if p in known_implementations))
            raise StoreBackendMissing(
                f"the store URL {self.url!r} given by {WHERE} has the protocol {self.protocol}://, which fsspec does "
                f"not know; give a local directory or a URL such as s3://bucket/prefix ({known}, ...)") from None

    # -- paths ---------------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        return f"{self.base}/{rel}".rstrip("/") if rel else self.base

    def endpoint(self) -> str:
        ck = self.options.get("client_kwargs") or {}
        return str(self.options.get("endpoint_url") or ck.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3")
                   or os.environ.get("AWS_ENDPOINT_URL") or "the backend's default endpoint")

    # -- errors --------------------------------------------------------------------------------
    def explain(self, exc: BaseException) -> StoreError:
        """`exc` from the backend as a StoreError that says what is wrong with the store and how to fix it."""
        if isinstance(exc, StoreError):
            return exc
        names, text = _names(exc), f"{type(exc).__name__}: {exc}"
        if names & {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"} or \
                "credential" in str(exc).lower() and not isinstance(exc, PermissionError):
            if self.protocol in ("s3", "s3a"):
                how = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or put "
                       f'{{"key": ..., "secret": ...}} in {OPTIONS_ENV}; a public bucket: {{"anon": true}}')
            elif self.protocol in ("gs", "gcs"):
                how = f'set GOOGLE_APPLICATION_CREDENTIALS, or put {{"token": ...}} in {OPTIONS_ENV}'
            else:
                how = f"give the backend's credentials in {OPTIONS_ENV} (a JSON object of fsspec storage options)"
            return StoreCredentialsMissing(f"no credentials for the store {self.url} ({WHERE}): {how} ({text})")
        if isinstance(exc, PermissionError) or names & {"AccessDenied", "Forbidden"}:
            return StoreAccessDenied(
                f"access to the store {self.url} ({WHERE}) was refused ({text}); check that the credentials are valid "
                "and may list, read and write under that prefix, or choose another store")
        if isinstance(exc, FileNotFoundError) and self.bucket:
            return StoreBucketMissing(
                f"the bucket {self.bucket!r} of the store {self.url} ({WHERE}) does not exist at {self.endpoint()}; "
                f"create it (e.g. `aws s3 mb {self.protocol}://{self.bucket}`) or fix the URL")
        if isinstance(exc, (TimeoutError, ConnectionError)) or names & {
                "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
                "ServerTimeoutError", "FSTimeoutError", "HTTPClientError", "ConnectionError"}:
            return StoreUnreachable(
                f"cannot reach the store {self.url} ({WHERE}) at {self.endpoint()} ({text}); check the endpoint "
                f"(AWS_ENDPOINT_URL, or client_kwargs.endpoint_url in {OPTIONS_ENV}) and the network")
        if isinstance(exc, TypeError):  # a storage option the backend does not take
            return StoreError(f"the storage options for {self.url} ({OPTIONS_ENV} or storage_options) are not "
                              f"accepted by the {self.protocol}:// backend: {exc}")
        return StoreError(f"the store {self.url} ({WHERE}) failed: {text}")

    def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """fn(*args) with backend errors turned into StoreErrors; FileNotFoundError passes (callers decide)."""
        try:
            return fn(*args, **kw)
        except FileNotFoundError:
            raise
        except Exception as e:
            raise self.explain(e) from e

    # -- the probe -----------------------------------------------------------------------------
    def probe(self, seconds: float = PROBE_SECONDS) -> None:
        """Fail now, with a clear StoreError, if the store cannot be used: backend, credentials, bucket, endpoint,
        permission. Costs one listing of the prefix (plus one bucket lookup when the prefix is still empty) and never
        takes much longer than `seconds`."""
        fs = self._probe_fs()

        def check() -> None:
            try:
                fs.ls(self.base, detail=False)
            except FileNotFoundError:  # an empty prefix is a new store; a missing bucket is not
                if self.bucket:
                    fs.info(self.bucket)

        box: dict[str, BaseException] = {}

        def target() -> None:
            try:
                check()
            except BaseException as e:  # noqa: BLE001 -- handed to the caller's thread
                box["error"] = e

        t = threading.Thread(target=target, name="store-probe", daemon=True)
        t.start()
        t.join(seconds)
        if t.is_alive():
            raise StoreUnreachable(f"the store {self.url} ({WHERE}) did not answer within {seconds:.0f} s at "
                                   f"{self.endpoint()}; check the endpoint (AWS_ENDPOINT_URL, or "
                                   f"client_kwargs.endpoint_url in {OPTIONS_ENV}) and the network")
        if "error" in box:
            raise self.explain(box["error"]) from box["error"]

    def _probe_fs(self) -> Any:
        """A filesystem like `self.fs` that gives up fast: botocore's default retries of a refused connection take
        ~12 s, a silent host minutes. Other backends rely on the thread deadline in `probe`."""
        if self.protocol not in ("s3", "s3a"):
            return self.fs
        cfg = {**(self.options.get("config_kwargs") or {}), "connect_timeout": 3, "read_timeout": 10,
               "retries": {"max_attempts": 1}}
        try:
            return type(self.fs)(**{**self.options, "config_kwargs": cfg, "skip_instance_cache": True})
        except Exception as e:
            raise self.explain(e) from e

    # -- runs ----------------------------------------------------------------------------------
    def upload_run(self, staging: Path, rel: str, marker: str) -> None:
        """Upload every file of `staging` to `{url}/{rel}/`, the `marker` file last: until it lands, no reader takes
        the run for published (an object store's PUT is atomic, so a marker is whole or absent)."""
        names = [n for n in tree_files(staging) if n not in MARKERS]
        target = self.path(rel)
        try:
            if self.protocol not in OBJECT_STORES:  # a filesystem-like backend needs the folders
                for folder in sorted({f"{target}/{n}".rsplit("/", 1)[0] for n in [*names, marker]}):
                    self._call(self.fs.makedirs, folder, exist_ok=True)
            if names:
                self._call(self.fs.put, [str(staging / n) for n in names], [f"{target}/{n}" for n in names])
            self._call(self.fs.put_file, str(staging / marker), f"{target}/{marker}")
        except FileNotFoundError as e:  # the bucket went away (a missing local file is not possible here)
            raise self.explain(e) from e

    def download_run(self, rel: str, dest: Path) -> bool:
        """Copy the published run `{url}/{rel}/` to the local directory `dest` (into a temp dir beside it, then one
        rename, so `dest` is whole or absent). False, and nothing written, when the remote has no marker there."""
        prefix = self.path(rel) + "/"
        try:
            found = self._call(self.fs.find, prefix.rstrip("/"))
        except FileNotFoundError:
            return False
        names = []
        for key in found:
            name = key[len(prefix):] if key.startswith(prefix) else ""
            try:
                check_relpath(name)
            except UnsafePath:
                continue  # a key that would land outside the run (or names nothing): never written locally
            if not name.endswith("/"):
                names.append(name)
        if not set(names) & set(MARKERS):
            return False
        tmp = dest.parent / f".{dest.name}.download-{secrets.token_hex(4)}"
        tmp.mkdir(parents=True)
        try:
            for n in names:
                (tmp / n).parent.mkdir(parents=True, exist_ok=True)
            self._call(self.fs.get, [prefix + n for n in names], [str(tmp / n) for n in names])
            try:
                os.rename(tmp, dest)
            except OSError:
                if not any((dest / m).is_file() for m in MARKERS):
                    raise  # not a concurrent download that won the race
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True

    def read_bytes(self, rel: str) -> bytes | None:
        """The file `{url}/{rel}`, or None when it does not exist."""
        try:
            return self._call(self.fs.cat_file, self.path(rel))
        except FileNotFoundError:
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
        try:
            if self.protocol not in OBJECT_STORES:
                self._call(self.fs.makedirs, target.rsplit("/", 1)[0], exist_ok=True)
            self._call(self.fs.pipe_file, target, data)
        except FileNotFoundError as e:
            raise self.explain(e) from e

    def exists(self, rel: str) -> bool:
        return bool(self._call(self.fs.exists, self.path(rel)))

    def published(self) -> list[tuple[str, str, bytes]]:
        """(run rel_path, marker name, marker bytes) of every `*/*/*/*/manifest.json` and `failure.json` (a dir with
        both counts as complete). One flat listing of the prefix (an object store lists it in pages of 1000 keys,
        where a glob would list folder by folder) and one batched read of the markers."""
        try:
            keys = self._call(self.fs.find, self.base)
        except FileNotFoundError:
            return []
        prefix, chosen = self.base + "/", {}
        for key in keys:
            parts = key[len(prefix):].split("/") if key.startswith(prefix) else []
            if len(parts) != 5 or parts[4] not in MARKERS or any(p.startswith(".") or not p for p in parts[:4]):
                continue
            rel = "/".join(parts[:4])
            if chosen.get(rel) != MARKERS[0]:
                chosen[rel] = parts[4]
        if not chosen:
            return []
        paths = [f"{prefix}{rel}/{m}" for rel, m in chosen.items()]
        data = self._call(self.fs.cat, paths, on_error="omit")
        return [(rel, m, data[p]) for (rel, m), p in zip(chosen.items(), paths) if p in data]
