"""Hub models and pretrained SAEs by name through a real MCP client (in process and over stdio), against the hub
stand-in: a download as a job with byte progress, cancel, the commit in the manifest, list_saes, load_sae(release)."""

from __future__ import annotations

import json
import os
import sys

import anyio
import pytest
from hub_stand_in import Repo, folder_files
from mcp import Client, StdioServerParameters
from mcp_helpers import call, call_error, finish
from models.test_hub import hf_repo_files

from mcp_interp.server.app import build_server

pytestmark = pytest.mark.anyio


def tiny_sae_files(tmp_path, d_in: int, hook: str) -> dict[str, bytes]:
    from mcp_interp.methods.features import make_training_sae, save_sae

    sae = make_training_sae("topk", d_in, 64, k=4, hook_name=hook, model_name="gpt2")
    d = tmp_path / "sae-build"
    save_sae(sae, d)
    return {f"{hook}/{k}": v for k, v in folder_files(d).items()}


async def test_load_model_by_id_is_a_job_with_byte_progress(hub, tmp_path, store_dir):
    files, _ = hf_repo_files(tmp_path, "llama-gqa")
    repo = hub.add("acme/tiny-llama", Repo(files))
    messages = []

    async def on_progress(p, total, message):
        messages.append(message or "")

    async with Client(build_server(store_dir)) as c:
        out = await call(c, "load_model", {"model": "acme/tiny-llama"}, progress_callback=on_progress)
        assert out["status"] == "complete" and out["revision"] == repo.commit and out["config"]["n_layers"] == 2
        assert any("downloading acme/tiny-llama" in m and "MiB" in m for m in messages), messages
        listed = {m["id"]: m for m in (await call(c, "list_models"))["models"]}
        assert listed["acme/tiny-llama"]["revisions"]["main"] == repo.commit
        text = await call_error(c, "load_model", {"model": "acme/tiny-lama"})
        assert "model:" in text and "not found on the hub" in text


async def test_a_slow_download_returns_a_job_that_cancels(hub, tmp_path, store_dir, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16384)
    files, _ = hf_repo_files(tmp_path, "gpt2")
    hub.add("acme/slow", Repo(files, slow={"model.safetensors": 0.05}))
    async with Client(build_server(store_dir)) as c:
        out = await call(c, "load_model", {"model": "acme/slow", "wait_seconds": 0.5})
        assert out["status"] in ("running", "queued") and out["job"]["job_id"]
        job_id = out["job"]["job_id"]
        await call(c, "cancel_job", {"job_id": job_id})
        job = await call(c, "get_job", {"job_id": job_id, "wait_seconds": 20})
        assert job["status"] == "cancelled", job
        assert "acme/slow" not in [m["id"] for m in (await call(c, "list_models"))["loaded"]]


async def test_pretrained_sae_by_release_downloads_and_records_the_commit(hub, tmp_path, store_dir):
    files, hf = hf_repo_files(tmp_path, "gpt2")
    model_repo = hub.add("gpt2", Repo(files))  # a tiny stand-in for GPT-2 small, at its real hub id
    hook = "blocks.0.hook_resid_pre"
    sae_repo = hub.add("jbloom/GPT2-Small-SAEs-Reformatted", Repo(tiny_sae_files(tmp_path, hf.config.n_embd, hook)))
    async with Client(build_server(store_dir)) as c:
        listed = await call(c, "list_saes", {"model": "gpt2-small"})
        entry = {(s["release"], s["sae_id"]): s for s in listed["saes"]}[("gpt2-small-res-jb", hook)]
        assert entry["repo_id"] == sae_repo_id(hub, sae_repo) and not entry["cached"]
        assert any(r["release"] == "gpt2-small-res-jb" for r in listed["releases"])
        text = await call_error(c, "load_sae", {"model": "gpt2", "release": "gpt2-small-res-jbb", "sae_id": hook})
        assert "release:" in text and "gpt2-small-res-jb" in text  # a close match suggested
        text = await call_error(c, "load_sae", {"model": "gpt2", "release": "gpt2-small-res-jb", "sae_id": "x"})
        assert "sae_id 'x' is not in release" in text
        out = await finish(c, await call(c, "load_sae", {"model": "gpt2", "release": "gpt2-small-res-jb",
                                                          "sae_id": hook, "include_plot": False}))
        assert out["hook"] == hook and out["d_in"] == hf.config.n_embd and out["d_sae"] == 64
        assert any("center_writing_weights" in w for w in out["warnings"])
        cfg = json.loads((await c.read_resource(out["files"]["sae/cfg.json"])).contents[0].text)  # a folder's file
        assert cfg["d_in"] == hf.config.n_embd
        manifest = json.loads((await c.read_resource(f"artifact://{out['run_id']}/manifest.json")).contents[0].text)
        assert model_repo.commit in json.dumps(manifest)  # the model's commit, in the run's manifest
        listed = await call(c, "list_saes", {"model": "gpt2", "release": "gpt2-small-res-jb"})
        assert {s["sae_id"]: s["cached"] for s in listed["saes"]}[hook]
        assert [s["run_id"] for s in listed["stored"]] == [out["run_id"]]


def sae_repo_id(hub, repo) -> str:
    return next(k for k, v in hub.repos.items() if v is repo)


async def test_over_stdio_a_server_downloads_from_the_hub_its_environment_names(hub, tmp_path, store_dir):
    """The user's path: HF_ENDPOINT / HF_HUB_CACHE / HF_TOKEN in the server's environment, nothing patched."""
    files, _ = hf_repo_files(tmp_path, "gpt2")
    repo = hub.add("acme/gated", Repo(files, gated_token="hf_ok"))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "hf-cache-stdio"), HF_HOME=str(tmp_path / "hf-home"))

    def server(extra: dict[str, str]) -> StdioServerParameters:
        return StdioServerParameters(command=sys.executable, args=["-m", "mcp_interp.server.cli", "--store",
                                                                    str(store_dir), "serve"], env={**env, **extra})

    with anyio.fail_after(240):
        async with Client(server({})) as c:
            text = await call_error(c, "load_model", {"model": "acme/gated"})
            assert "gated" in text and "HF_TOKEN" in text
        async with Client(server({"HF_TOKEN": "hf_ok"})) as c:
            out = await call(c, "load_model", {"model": "acme/gated"})
            assert out["revision"] == repo.commit
        async with Client(server({"HF_HUB_OFFLINE": "1"})) as c:  # cached now: loads with no network
            n = len(hub.log)
            assert (await call(c, "load_model", {"model": "acme/gated"}))["revision"] == repo.commit
            text = await call_error(c, "load_model", {"model": "acme/other"})
            assert "offline" in text
            assert len(hub.log) == n


async def test_a_transcoder_folder_of_a_hub_repository_loads_by_name(hub, tmp_path, store_dir):
    """EleutherAI publishes sparsify transcoders as one `layers.L.mlp` folder per MLP in a hub repository."""
    from methods.features.test_transcoder import sparsify_folder

    folder, _ = sparsify_folder(tmp_path / "tc", 1, 32)
    files = {f"layers.1.mlp/{k}": v for k, v in folder_files(folder).items()}
    files["layers.0.mlp/cfg.json"] = b"{}"  # another layer's folder: not fetched
    hub.add("acme/transcoders-tiny", Repo(files))
    async with Client(build_server(store_dir)) as c:
        out = await finish(c, await call(c, "load_sae", {"model": "toy/tiny-random", "release": "acme/transcoders-tiny",
                                                          "sae_id": "layers.1.mlp", "include_plot": False}))
        assert out["architecture"] == "sparsify_skip_transcoder" and out["hook"] == "blocks.1.hook_mlp_in"
        text = await call_error(c, "load_sae", {"model": "toy/tiny-random", "release": "acme/transcoders-tiny",
                                                "sae_id": "layers.7.mlp"})
        assert "release:" in text and "no folder" in text
    fetched = [p for m, p, _ in hub.log if m == "GET" and "/resolve/" in p]
    assert fetched and all("layers.1.mlp" in p for p in fetched)


async def test_trace_takes_a_hub_repository_of_transcoder_folders_as_its_set(hub, tmp_path, store_dir):
    """A published transcoder set (one sparsify `layers.L.mlp` folder per MLP, as EleutherAI's) named by its repo id:
    trace downloads every layer's cfg.json and sae.safetensors (nothing else) inside its job and traces with them;
    a repository without such folders is refused naming `transcoders`."""
    from methods.features.test_transcoder import sparsify_folder

    files = {}
    for layer in (0, 1):
        folder, _ = sparsify_folder(tmp_path / "tc", layer, 32, seed=layer)
        files |= {f"layers.{layer}.mlp/{k}": v for k, v in folder_files(folder).items()}
    files["README.md"] = b"two skip transcoders"
    files["layers.0.mlp/notes.txt"] = b"not fetched"
    hub.add("acme/tiny-transcoder-set", Repo(files))
    hub.add("acme/not-transcoders", Repo({"README.md": b"nothing here"}))
    async with Client(build_server(store_dir)) as c:
        out = await finish(c, await call(c, "trace", {"model": "toy/tiny-random", "prompt": "abcab",
                                                      "transcoders": "acme/tiny-transcoder-set",
                                                      "contexts_corpus": "none", "check_top": 2}))
        assert [p.split("/")[-1] for p in out["transcoders"]] == ["layers.0.mlp", "layers.1.mlp"]
        assert out["identity_error"] < 1e-4 and out["n_feature_nodes"] > 0
        text = await call_error(c, "trace", {"model": "toy/tiny-random", "prompt": "abcab",
                                             "transcoders": "acme/not-transcoders"})
        assert "transcoders:" in text and "no transcoder folders" in text, text
        text = await call_error(c, "trace", {"model": "toy/tiny-random", "prompt": "abcab",
                                             "transcoders": "acme/no-such-repo"})
        assert "transcoders:" in text and "not a local directory" in text and "hub repository" in text, text
    fetched = {p.split("/")[-1] for m, p, _ in hub.log if m == "GET" and "/resolve/" in p}
    assert fetched == {"cfg.json", "sae.safetensors"}, fetched  # (the two equal cfg.json share one cached blob)
