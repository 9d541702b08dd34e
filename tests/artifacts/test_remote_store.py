"""The artifact store on object storage (issue 28 item 4): a real S3-compatible server on 127.0.0.1 (moto's server
mode) reached through s3fs, plus memory:// and a shared directory with per-process indexes."""

from __future__ import annotations

import json
import socket
import time

import pytest

from mcp_interp.artifacts import (
    ArtifactStore,
    RunNotComplete,
    RunNotFound,
    StoreBackendMissing,
    StoreBucketMissing,
    StoreCredentialsMissing,
    StoreError,
    StoreUnreachable,
    mirror_root,
)

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
BUCKET = "mcp-interp-test"


@pytest.fixture(scope="module")
def endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    import boto3

    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


@pytest.fixture
def opts(endpoint, monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "MCP_INTERP_STORE_OPTIONS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups from botocore
    return {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}


@pytest.fixture
def url(request):
    return f"s3://{BUCKET}/{request.node.name}"


def _open(url, opts, tmp_path, name, **kw):
    return ArtifactStore(url, cache_dir=tmp_path / name, storage_options=opts, **kw)


def _run(store, tool="locate", **kw):
    h = store.create_run(tool, "ioi", "toy/tiny-random", {"layers": [0, 1]}, seed=0,
                         model_info={"weight_hash": "w1"}, task_hash="t1", **kw)
    h.write_json("table", {"x": [1, 2]})
    h.write_bytes("sub/raw.bin", b"\x00\x01\x02")
    return h


def _remote_names(store, rel):
    prefix = store.remote.path(rel) + "/"
    return sorted(k[len(prefix):] for k in store.remote.fs.find(prefix.rstrip("/")))


def test_published_run_is_listed_and_read_back_by_a_second_store(url, opts, tmp_path):
    s1 = _open(url, opts, tmp_path, "cache1")
    assert s1.url == url and s1.remote is not None
    assert s1.root == mirror_root(url, tmp_path / "cache1") and s1.root.parent == tmp_path / "cache1" / "stores"
    rec = _run(s1).finish({"summary": "found", "n": 3}, {"acc": 0.75})
    assert [r.run_id for r in s1.list_runs()] == [rec.run_id] and rec.status == "complete"
    assert _remote_names(s1, rec.rel_path) == ["manifest.json", "result.json", "sub/raw.bin", "table.json"]
    assert json.loads(s1.remote.read_bytes(f".runs/{rec.run_id}.json")) == {"rel_path": rec.rel_path}
    assert (s1.root / rec.rel_path / "manifest.json").is_file()  # staging moved into the mirror
    assert not (s1.root / ".staging" / rec.run_id).exists()

    # a second process: its own cache dir and its own index file, which starts empty -> rebuilt from the remote
    s2 = _open(url, opts, tmp_path, "cache2", index_path=tmp_path / "idx2" / "index.sqlite")
    assert not (s2.root / "index.sqlite").exists() and (tmp_path / "idx2" / "index.sqlite").is_file()
    got = s2.get_run(rec.run_id)
    assert got.model_dump(exclude={"seconds"}) == rec.model_dump(exclude={"seconds"})
    assert not (s2.root / rec.rel_path).exists()  # nothing downloaded until a file is read
    path = s2.resolve_file(rec.run_id, "sub/raw.bin")
    assert path.read_bytes() == b"\x00\x01\x02" and path.is_relative_to(s2.root)
    assert s2.list_files(rec.run_id) == s1.list_files(rec.run_id)
    assert s2.read_result(rec.run_id) == {"summary": "found", "n": 3}
    assert s2.read_manifest(rec.run_id)["key_metrics"] == {"acc": 0.75}
    assert s2.find_cached("locate", "ioi", "toy/tiny-random", rec.params_hash).run_id == rec.run_id
    assert not list((s2.root / rec.rel_path).parent.glob(".*download*"))  # the temp dir was renamed into place

    def no_more_downloads(*a, **k):
        raise AssertionError("a mirrored run was downloaded again")

    s2.remote.download_run = no_more_downloads  # a complete mirror is never fetched again
    assert s2.resolve_file(rec.run_id, "table.json").is_file()
    # the remote answers the cache even when this machine's mirror is gone
    s3 = _open(url, opts, tmp_path, "cache3")
    assert s3.find_cached("locate", "ioi", "toy/tiny-random", rec.params_hash).run_id == rec.run_id


def test_failed_run_publishes_failure_json(url, opts, tmp_path):
    s1 = _open(url, opts, tmp_path, "c1")
    with pytest.raises(RuntimeError):
        with _run(s1) as h:
            raise RuntimeError("boom")
    assert _remote_names(s1, h.record.rel_path) == ["failure.json", "sub/raw.bin", "table.json"]
    s2 = _open(url, opts, tmp_path, "c2")
    rec = s2.get_run(h.run_id)
    assert rec.status == "failed" and "RuntimeError: boom" in rec.error
    with pytest.raises(RunNotComplete, match="failed"):
        s2.read_result(h.run_id)
    assert s2.list_files(h.run_id) == ["failure.json", "sub/raw.bin", "table.json"]  # kept for debugging
    assert s2.read_manifest(h.run_id)["status"] == "failed"


def test_upload_stopped_before_the_manifest_never_reads_complete(url, opts, tmp_path, monkeypatch):
    s1 = _open(url, opts, tmp_path, "c1")
    h = _run(s1)
    put_file = s1.remote.fs.put_file

    def lose_the_connection_at_the_manifest(lpath, rpath, **kw):
        if rpath.endswith("/manifest.json"):
            raise ConnectionError("connection reset by peer")
        return put_file(lpath, rpath, **kw)

    with monkeypatch.context() as m:
        m.setattr(s1.remote.fs, "put_file", lose_the_connection_at_the_manifest)
        with pytest.raises(StoreUnreachable, match="connection reset"):
            h.finish({"n": 1}, {})
    rel = h.record.rel_path
    assert _remote_names(s1, rel) == ["result.json", "sub/raw.bin", "table.json"]  # the data went up, no marker
    assert not s1.remote.exists(f".runs/{h.run_id}.json")
    # this store: not complete, not cached, nothing served
    assert s1.get_run(h.run_id).status == "running"
    assert s1.find_cached("locate", "ioi", "toy/tiny-random", h.record.params_hash) is None
    with pytest.raises(RunNotComplete):
        s1.read_result(h.run_id)
    assert s1.list_files(h.run_id) == []
    # another store object on the same URL: unknown, and a rebuild does not list it
    s2 = _open(url, opts, tmp_path, "c2")
    with pytest.raises(RunNotFound):
        s2.get_run(h.run_id)
    assert s2.rebuild_index() == 0 and s2.list_runs(limit=None) == []
    assert s2.find_cached("locate", "ioi", "toy/tiny-random", h.record.params_hash) is None
    # the writer's restart: the run it left running is interrupted (the remote has no marker)
    s1b = _open(url, opts, tmp_path, "c1")
    assert s1b.mark_running_interrupted() == 1 and s1b.get_run(h.run_id).status == "interrupted"
    # the handle's failure path publishes failure.json and drops the staged manifest: failed, never complete
    h.fail("StoreUnreachable: upload stopped")
    assert _remote_names(s1, rel) == ["failure.json", "result.json", "sub/raw.bin", "table.json"]
    s3 = _open(url, opts, tmp_path, "c3")
    assert s3.get_run(h.run_id).status == "failed" and s3.list_runs(status="complete") == []


def test_get_run_finds_a_run_written_by_another_store_object(url, opts, tmp_path):
    reader = _open(url, opts, tmp_path, "reader")  # opened first: its index never saw the run
    writer = _open(url, opts, tmp_path, "worker", index_path=tmp_path / "worker-index.sqlite")
    rec = _run(writer).finish({"n": 1}, {"acc": 1.0})
    assert reader.list_runs() == []
    got = reader.get_run(rec.run_id)  # index miss -> pointer -> manifest -> adopted
    assert got.status == "complete" and got.key_metrics == {"acc": 1.0} and got.rel_path == rec.rel_path
    assert [r.run_id for r in reader.list_runs()] == [rec.run_id]
    assert reader.read_result(rec.run_id) == {"n": 1}
    for bad in ("no-such-run", "../x", "a/b", ".runs", ""):
        with pytest.raises(RunNotFound):
            reader.get_run(bad)
    # adopt_run: a record handed over by the worker (e.g. returned from a Ray task)
    other = _run(writer, tool="das").finish({"n": 2}, {})
    assert reader.adopt_run(other.model_dump()).run_id == other.run_id
    assert reader.index.get_run(other.run_id).tool == "das"
    with pytest.raises(StoreError, match="rel_path"):
        reader.adopt_run(other.model_copy(update={"rel_path": "../../etc/" + other.run_id}))


def test_manifest_extra_reaches_the_manifest(url, opts, tmp_path):
    worker = _open(url, opts, tmp_path, "w")
    worker.manifest_extra = {"worker": {"host": "node-2", "node_id": "abc", "actor_id": "def", "device": "cpu"}}
    rec = _run(worker).finish({"n": 1}, {})
    reader = _open(url, opts, tmp_path, "r")
    m = reader.read_manifest(rec.run_id)
    assert m["worker"] == worker.manifest_extra["worker"] and m["run_id"] == rec.run_id
    assert reader.rebuild_index() == 1 and reader.get_run(rec.run_id).status == "complete"
    worker.manifest_extra = {"status": "complete"}
    with pytest.raises(StoreError, match="manifest_extra may not set \\['status'\\]"):
        _run(worker)


def test_aws_endpoint_url_from_the_environment(url, endpoint, opts, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # botocore reads it: no client_kwargs needed
    store = ArtifactStore(url, cache_dir=tmp_path, storage_options={"key": "test", "secret": "test"})
    rec = _run(store).finish({"n": 1}, {})
    assert store.remote.exists(f"{rec.rel_path}/manifest.json")


def test_storage_options_from_the_environment(url, opts, tmp_path, monkeypatch):
    monkeypatch.setenv("MCP_INTERP_STORE_OPTIONS", json.dumps(opts))
    store = ArtifactStore(url, cache_dir=tmp_path)
    assert store.storage_options["client_kwargs"] == opts["client_kwargs"]  # what a worker is handed
    worker = ArtifactStore(url, cache_dir=tmp_path / "w", storage_options=store.storage_options)
    assert worker.remote.options == store.remote.options
    monkeypatch.setenv("MCP_INTERP_STORE_OPTIONS", "{not json")
    with pytest.raises(StoreError, match="MCP_INTERP_STORE_OPTIONS is not valid JSON"):
        ArtifactStore(url, cache_dir=tmp_path)


def test_missing_credentials_are_named(url, endpoint, opts, tmp_path, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(StoreCredentialsMissing) as e:
        ArtifactStore(url, cache_dir=tmp_path, storage_options={"client_kwargs": {"endpoint_url": endpoint}})
    msg = str(e.value)
    assert "AWS_ACCESS_KEY_ID" in msg and "AWS_SECRET_ACCESS_KEY" in msg and "--store" in msg
    assert not (tmp_path / "stores").exists()  # refused before any work


def test_missing_bucket_is_named(opts, tmp_path):
    with pytest.raises(StoreBucketMissing, match="'no-such-bucket'.*does not exist.*aws s3 mb"):
        ArtifactStore("s3://no-such-bucket/runs", cache_dir=tmp_path, storage_options=opts)


def test_unreachable_endpoint_fails_in_seconds(url, opts, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    bad = {**opts, "client_kwargs": {**opts["client_kwargs"], "endpoint_url": f"http://127.0.0.1:{closed}"}}
    t0 = time.monotonic()
    with pytest.raises(StoreUnreachable, match=f"127.0.0.1:{closed}.*AWS_ENDPOINT_URL"):
        ArtifactStore(url, cache_dir=tmp_path, storage_options=bad)
    assert time.monotonic() - t0 < 5  # botocore's default retries would take ~12 s


def test_missing_backend_is_named(tmp_path):
    with pytest.raises(StoreBackendMissing, match="nosuch://.*--store.*local directory or a URL"):
        ArtifactStore("nosuch://x/y", cache_dir=tmp_path)
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(StoreBackendMissing, match="pip install gcsfs"):
            ArtifactStore("gs://bucket/prefix", cache_dir=tmp_path)


def test_memory_url_round_trip(tmp_path, request):
    url = f"memory://mcp-interp-tests/{request.node.name}-{time.time_ns()}"
    s1 = ArtifactStore(url, cache_dir=tmp_path / "a")
    rec = _run(s1).finish({"n": 1}, {})
    s2 = ArtifactStore(url, cache_dir=tmp_path / "b")
    assert s2.get_run(rec.run_id).status == "complete"
    assert s2.resolve_file(rec.run_id, "sub/raw.bin").read_bytes() == b"\x00\x01\x02"


def test_shared_directory_with_an_index_per_process(tmp_path):
    shared = tmp_path / "shared"
    a = ArtifactStore(shared, index_path=tmp_path / "a" / "index.sqlite")
    b = ArtifactStore(f"file://{shared}", index_path=tmp_path / "b" / "index.sqlite")
    assert b.url is None and b.remote is None and b.root == a.root == shared
    rec = _run(a).finish({"n": 1}, {"acc": 0.5})
    assert not (shared / "index.sqlite").exists()  # SQLite stays off the shared filesystem
    assert json.loads((shared / ".runs" / f"{rec.run_id}.json").read_text()) == {"rel_path": rec.rel_path}
    assert b.list_runs() == []
    assert b.get_run(rec.run_id).key_metrics == {"acc": 0.5}  # found by its pointer
    assert b.resolve_file(rec.run_id, "table.json") == a.resolve_file(rec.run_id, "table.json")
    c = ArtifactStore(shared, index_path=tmp_path / "c" / "index.sqlite")  # a new index: rebuilt from the dirs
    assert [r.run_id for r in c.list_runs()] == [rec.run_id]


def test_refused_credentials_read_as_access_denied(tmp_path):
    from mcp_interp.artifacts import StoreAccessDenied
    from mcp_interp.artifacts.remote import RemoteRoot

    # moto does not enforce permissions: the mapping from the backend's error (s3fs raises PermissionError for
    # AccessDenied / InvalidAccessKeyId / SignatureDoesNotMatch) is checked directly
    err = RemoteRoot("memory://x/y").explain(PermissionError("Access Denied"))
    assert isinstance(err, StoreAccessDenied)
    assert "--store" in str(err) and "may list, read and write" in str(err) and "Access Denied" in str(err)
