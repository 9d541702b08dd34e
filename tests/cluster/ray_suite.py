"""Heavy tools on a real two-node Ray cluster (one CPU per node), driven through real MCP clients.

Run by `test_ray_netns.py` inside a private network namespace (every node is 127.0.0.1 there); skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime

import pytest
from mcp import Client, StdioServerParameters
from mcp_helpers import call, call_error, finish, free_port

if os.environ.get("MCP_INTERP_NETNS") != "1":
    pytest.skip("run by test_ray_netns.py inside a private network namespace", allow_module_level=True)

ray = pytest.importorskip("ray")

from mcp_interp.runtime.cluster import NAMESPACE, ClusterError, resolve_address  # noqa: E402
from mcp_interp.server.app import build_server  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]  # a hang fails its own test, with a traceback
NODE_MEMORY = 2**30  # logical memory per node: a model estimated larger fits no worker
# one toy model (and its second seed) throughout: each new model costs a worker process start
MODEL = "toy/planted-features"
LOCATE = {"model": MODEL, "task": "planted-features", "n": 8, "layers": [0, 1]}
# a job that runs for minutes unless stopped (progress and cancellation every step)
LONG_SAE = {"model": MODEL, "site": "resid_pre", "layer": 1, "corpus": "random", "tokens": 4096,
            "epochs": 1000, "batch_size": 64, "wait_seconds": 0}
DROP = ("run_id", "files", "cost", "cached")  # what differs between two runs of one computation


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "memory": NODE_MEMORY, "include_dashboard": False})
    c.add_node(num_cpus=1, memory=NODE_MEMORY)
    c.wait_for_nodes()
    yield c.address
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def ray_store(tmp_path_factory):
    return tmp_path_factory.mktemp("ray-store")


def _manifest(store, run_id: str) -> dict:
    found = list(store.glob(f"*/*/*/{run_id}/manifest.json"))
    assert found, f"run {run_id} not published under {store}"
    return json.loads(found[0].read_text())


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _same(a: dict, b: dict) -> None:
    """Equal to the bit, apart from each run's own id (which results quote, e.g. in paths)."""
    texts = [json.dumps({k: v for k, v in r.items() if k not in DROP}, sort_keys=True).replace(r["run_id"], "RUN")
             for r in (a, b)]
    assert texts[0] == texts[1]


async def _wait_running(c, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await call(c, "get_job", {"job_id": job_id, "wait_seconds": 0.5})
        if job["status"] == "running" and job["progress"] > 0.05:
            return job
        assert job["status"] in ("queued", "running"), job
    raise AssertionError(f"job {job_id} never got going")


async def test_heavy_tool_on_ray_equals_local_and_reads_back(cluster, ray_store, tmp_path):
    async with Client(build_server(ray_store, ray=cluster), raise_exceptions=True) as c:
        remote = await finish(c, await call(c, "locate", LOCATE))
        listed = await call(c, "list_runs", {})
        assert remote["run_id"] in {r["run_id"] for r in listed["runs"]}
        blob = await c.read_resource(remote["files"]["effects.json"] if "effects.json" in remote["files"]
                                     else next(u for n, u in remote["files"].items() if n.endswith(".json")))
        assert blob.contents[0].text
        again = await call(c, "locate", LOCATE)  # the run cache answers from the server's index
        assert again["result"]["cached"] and again["result"]["run_id"] == remote["run_id"]
    worker = _manifest(ray_store, remote["run_id"])["worker"]
    assert worker["node_id"] and worker["actor_id"] and worker["host"] and worker["pid"] != os.getpid()
    async with Client(build_server(tmp_path / "local"), raise_exceptions=True) as c:
        local = await finish(c, await call(c, "locate", LOCATE))
    _same(remote, local)  # bit-identical: the same code, seeds and CPU arithmetic on the worker


async def test_sweep_over_two_models_uses_both_nodes_at_once(cluster, ray_store):
    grid = {"model": [MODEL, f"{MODEL}-s1"]}
    base = {"site": "resid_pre", "layer": 1, "corpus": "random", "tokens": 2048, "epochs": 40, "batch_size": 64}
    async with Client(build_server(ray_store, ray=cluster), raise_exceptions=True) as c:
        for model in grid["model"]:  # resident first (load_model runs on the model's worker): a cold start is not
            await call(c, "load_model", {"model": model, "wait_seconds": 120})  # what this test is about
        out = await finish(c, await call(c, "sweep", {"tool": "train_sae", "base": base, "grid": grid,
                                                      "wait_seconds": 300}))
    rows = out["rows"]
    assert [r["status"] for r in rows] == ["complete", "complete"], rows
    manifests = [_manifest(ray_store, r["run_id"]) for r in rows]
    assert len({m["worker"]["node_id"] for m in manifests}) == 2  # one worker per node
    # each run computed from (finished - its job's total seconds) to finished: the two spans overlap
    spans = [(_seconds(m["timings"]["finished"]) - r["seconds"], _seconds(m["timings"]["finished"]))
             for m, r in zip(manifests, rows)]
    assert max(s for s, _ in spans) < min(e for _, e in spans), f"the two runs did not overlap: {spans}"
    async with Client(build_server(ray_store, ray=cluster), raise_exceptions=True) as c:
        workers = (await call(c, "list_models"))["workers"]
    assert sorted(w["model"] for w in workers) == sorted(grid["model"]), workers


async def test_killed_worker_fails_its_job_and_the_next_call_recovers(cluster, ray_store):
    async with Client(build_server(ray_store, ray=cluster), raise_exceptions=True) as c:
        out = await call(c, "train_sae", LONG_SAE)
        job_id = out["job"]["job_id"]
        await _wait_running(c, job_id)
        ray.init(address=cluster, namespace=NAMESPACE, ignore_reinit_error=True)
        name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["namespace"] == NAMESPACE and a["name"].endswith(f":{MODEL}:float32:1"))
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
        t0 = time.monotonic()
        job = await call(c, "get_job", {"job_id": job_id, "wait_seconds": 30})
        assert job["status"] == "failed" and "died" in job["error"], job
        assert time.monotonic() - t0 < 30
        short = {**LONG_SAE, "epochs": 2, "tokens": 1024, "wait_seconds": 120}
        again = await finish(c, await call(c, "train_sae", short))
        assert again["run_id"]
        # a worker that dies while idle: the next request finds it gone and starts a new one
        name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["namespace"] == NAMESPACE and a["name"].endswith(f":{MODEL}:float32:1"))
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))
        assert (await finish(c, await call(c, "train_sae", {**short, "seed": 3})))["run_id"]


async def test_cancel_reaches_the_worker(cluster, ray_store):
    async with Client(build_server(ray_store, ray=cluster), raise_exceptions=True) as c:
        out = await call(c, "train_sae", {**LONG_SAE, "seed": 7})
        job_id = out["job"]["job_id"]
        await _wait_running(c, job_id)
        # a second job on the same model queues behind it on the worker; cancelled, it ends at once
        queued = (await call(c, "train_sae", {**LONG_SAE, "seed": 8}))["job"]["job_id"]
        t0 = time.monotonic()
        await call(c, "cancel_job", {"job_id": queued})
        job = await call(c, "get_job", {"job_id": queued, "wait_seconds": 10})
        assert job["status"] == "cancelled" and time.monotonic() - t0 < 10, job
        assert (await call(c, "get_job", {"job_id": job_id, "wait_seconds": 0}))["status"] == "running"
        # the running one stops within seconds: the flag reaches the worker's training loop
        t0 = time.monotonic()
        await call(c, "cancel_job", {"job_id": job_id})
        job = await call(c, "get_job", {"job_id": job_id, "wait_seconds": 20})
        assert job["status"] == "cancelled", job
        assert time.monotonic() - t0 < 20


async def test_model_that_fits_no_worker_is_refused_before_work(cluster, ray_store, tmp_path):
    from tiny_hf import tiny_family, tiny_hf_tokenizer

    # a real HF folder whose weights file then grows (sparse) past what any node offers: the size estimate reads it
    tok, folder = tiny_hf_tokenizer(), tmp_path / "big"
    tiny_family("llama-gqa", len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    weights = next(folder.glob("*.safetensors"))
    with open(weights, "r+b") as f:  # the estimate is its size x 1.2; the server also hashes it: keep it small
        f.truncate(NODE_MEMORY)
    async with Client(build_server(ray_store, ray=cluster), raise_exceptions=True) as c:
        text = await call_error(c, "run_baseline", {"model": f"hf:{folder}", "task": "induction", "n": 4})
    assert f"model: hf:{folder}" in text and "largest node" in text and "Fix:" in text, text


def test_unreachable_address_is_refused_at_once():
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=f"127.0.0.1:{port}.*Fix:"):
        resolve_address(f"127.0.0.1:{port}")
    proc = subprocess.run([sys.executable, "-m", "mcp_interp.server.cli", "serve", "--ray", f"127.0.0.1:{port}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--ray" in proc.stderr and "Fix:" in proc.stderr, proc.stderr
    assert time.monotonic() - t0 < 30


def _stdio(store, address: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "mcp_interp.server.cli", "--store", str(store),
                                                               "serve", "--ray", address], env=dict(os.environ))


async def test_restarted_server_finds_the_resident_worker(cluster, ray_store):
    args = {"model": MODEL, "task": "planted-features", "n": 8, "force": True, "wait_seconds": 120}
    async with Client(build_server(ray_store, ray=cluster), raise_exceptions=True) as c:  # a server that then stops
        first = await finish(c, await call(c, "run_baseline", args))
    async with Client(_stdio(ray_store, cluster)) as c:  # a new server process, over stdio, on the same store
        second = await finish(c, await call(c, "run_baseline", args))
    pids = [_manifest(ray_store, r["run_id"])["worker"]["pid"] for r in (first, second)]
    assert pids[0] == pids[1]  # the second server used the actor the first had: the model stayed loaded


async def test_object_store_runs_written_by_workers_read_back_through_artifact_uris(cluster, tmp_path, monkeypatch):
    """The store on an S3-compatible server (moto, 127.0.0.1) through s3fs; credentials and endpoint come from the
    environment, which the server forwards to its workers."""
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true",
                     "MCP_INTERP_STORE_CACHE": str(tmp_path / "server-cache")}.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="runs")
        url = "s3://runs/study"
        async with Client(build_server(url, ray=cluster), raise_exceptions=True) as c:
            res = await finish(c, await call(c, "locate", LOCATE))
            assert res["run_id"] in {r["run_id"] for r in (await call(c, "list_runs", {}))["runs"]}
            text = (await c.read_resource(f"artifact://{res['run_id']}/result.json")).contents[0].text
            assert json.loads(text)["run_id"] == res["run_id"]
        keys = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="runs")["Contents"]
        mine = [k["Key"] for k in keys if f"/{res['run_id']}/" in k["Key"]]
        assert any(k.endswith("/manifest.json") for k in mine) and any(k.endswith("/result.json") for k in mine)
        # a second server with an empty cache (no index, no mirror) finds the run on the object store
        monkeypatch.setenv("MCP_INTERP_STORE_CACHE", str(tmp_path / "other-cache"))
        # both nodes were held by the other store's two idle workers: one was stopped to place this store's
        ray.init(address=cluster, namespace=NAMESPACE, ignore_reinit_error=True)
        alive = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == NAMESPACE]
        assert len(alive) <= 2 and any(":toy/planted-features:" in a["name"] for a in alive), alive
        async with Client(build_server(url), raise_exceptions=True) as c:
            got = await call(c, "get_run", {"run_id": res["run_id"]})
            assert got["result"]["run_id"] == res["run_id"]
            manifest = json.loads((await c.read_resource(f"artifact://{res['run_id']}/manifest.json")).contents[0].text)
            assert manifest["worker"]["node_id"]
    finally:
        server.stop()


async def test_a_worker_that_cannot_see_the_store_says_so(cluster, tmp_path):
    store = tmp_path / "unshared"
    async with Client(build_server(store, ray=cluster), raise_exceptions=True) as c:
        (store / ".mcp-interp-store").unlink()  # as on a node where this directory is another (unshared) one
        text = await call_error(c, "run_baseline", {"model": MODEL, "task": "planted-features", "n": 4})
    assert "could not start" in text and "not the server's" in text and "Fix:" in text, text
