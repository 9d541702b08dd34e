"""Local paths a client names (issue 26, items 5 and 6), through a real MCP client: SAE directories (load_sae's
`path`, find_features' `sae`) and train_sae's corpus files are confined to the server's roots like hf:/gguf: ids,
with one answer whether or not anything exists outside them; a remote (HTTP) client reads no absolute server path."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp_helpers import call, call_error, finish

from mcp_interp.methods import features as F
from mcp_interp.server.app import build_server
from mcp_interp.toymodels.planted_features import SITE_HOOK, build_planted_features

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_thread")]
MODEL = "toy/planted-features"
TRAIN = {"model": MODEL, "site": "resid_pre", "layer": 1, "corpus": "files", "tokens": 64, "context": 8,
         "d_sae": 8, "k": 2, "epochs": 1, "batch_size": 16, "splice_windows": 0, "wait_seconds": 60}


def _sae_dir(path) -> str:
    """A (fresh) sae-lens SAE that fits toy/planted-features, saved at `path`."""
    d_model = build_planted_features(0)[0].cfg.d_model
    F.save_sae(F.make_training_sae("topk", d_model, 8, k=2, hook_name=SITE_HOOK, seed=0).eval(), path)
    return str(path)


@pytest.fixture
def places(tmp_path):
    """(root, outside): a root the server reads under, and a directory beside it holding an SAE and a secret."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    _sae_dir(outside / "sae")
    (outside / "secret.txt").write_text("Secret: the server's own file")
    return root, outside


async def test_sae_paths_outside_the_roots_get_one_answer(store_dir, places):
    root, outside = places
    (root / "escape").symlink_to(outside / "sae")  # inside the root, leading out of it
    refs = [str(outside / "sae"), str(outside / "missing"), str(root / "escape"), f"{root}/../outside/sae"]
    async with Client(build_server(store_dir, model_roots=[root])) as c:
        loads = [await call_error(c, "load_sae", {"model": MODEL, "path": r}) for r in refs]
        finds = [await call_error(c, "find_features", {"model": MODEL, "task": "planted-features", "variable": "g",
                                                       "source": "sae", "sae": r, "n": 8}) for r in refs]
        assert (await call(c, "list_runs"))["runs"] == []  # nothing was copied into the store
        inside = await finish(c, await call(c, "load_sae", {"model": MODEL, "path": _sae_dir(root / "sae")}))
        missing_inside = await call_error(c, "load_sae", {"model": MODEL, "path": str(root / "missing")})
    # an SAE that exists out there, one that does not, and a link out: one answer each, naming the field and the fix
    assert len(set(loads)) == 1 and len(set(finds)) == 1, (loads, finds)
    assert "load_sae: path: " in loads[0] and "sae: " in finds[0] and "--model-root" in loads[0]
    assert inside["hook"] == SITE_HOOK and inside["d_sae"] == 8
    assert "neither a stored run id nor a directory" in missing_inside


async def test_corpus_files_are_confined_and_counted(store_dir, places):
    root, outside = places
    (root / "passwd.txt").symlink_to("/etc/passwd")
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "ok.txt").write_text("abcd efgh ijkl mnop " * 20)
    refused = [[str(outside / "secret.txt")], [str(outside / "missing.txt")], [str(root / "passwd.txt")],
               [str(root / "leak.txt")]]
    async with Client(build_server(store_dir, model_roots=[root])) as c:
        texts = [await call_error(c, "train_sae", {**TRAIN, "files": f}) for f in refused]
        # every file is checked before any is read: a good first file does not let a bad second one through
        mixed = await call_error(c, "train_sae", {**TRAIN, "files": [str(root / "ok.txt"),
                                                                     str(outside / "secret.txt")]})
        many = await call_error(c, "train_sae", {**TRAIN, "files": [str(root / f"{i}.txt") for i in range(257)]})
        trained = await finish(c, await call(c, "train_sae", {**TRAIN, "files": [str(root / "ok.txt")]}))
    assert len(set(texts)) == 1, texts
    assert "train_sae: files[0]: " in texts[0] and "character" not in texts[0] and "Secret" not in texts[0]
    assert mixed == texts[0].replace("files[0]", "files[1]")
    assert "files: 257 files given, at most 256" in many and "Fix: concatenate" in many
    assert trained["corpus"] == "files" and trained["tokens_collected"] > 0


async def test_a_remote_client_reads_no_absolute_server_path(store_dir, places, tmp_path):
    root, _ = places
    sae = _sae_dir(root / "sae")
    async with Client(build_server(store_dir, model_roots=[root], remote=True)) as c:
        loaded = await finish(c, await call(c, "load_sae", {"model": MODEL, "path": sae}))
        listed = await call(c, "list_runs")
        shown = await call(c, "get_run", {"run_id": loaded["run_id"], "include_plot": False})
        rep = await call(c, "report", {"run_ids": [loaded["run_id"]]})
        refusals = [await call_error(c, "load_model", {"model": "hf:/etc"}),
                    await call_error(c, "load_sae", {"model": MODEL, "path": "/etc"}),
                    await call_error(c, "find_features", {"model": MODEL, "task": "planted-features", "variable": "g",
                                                          "source": "das", "das_run": "20000101-000000-000000"})]
        resource = await c.read_resource(f"artifact://{loaded['run_id']}/result.json")
    seen = [str(x) for x in (loaded, listed, shown, rep, refusals, resource.contents[0].text)]
    for text in seen:
        assert str(tmp_path) not in text, text  # neither the store, nor the root, nor anything under them
    assert listed["store"] == "<store>" and loaded["sae_path"].startswith("<store>/")
    assert rep["html_path"].startswith("<store>/") and rep["html_path"].endswith("/report.html")
    assert "allowed roots" in refusals[0] and "in the store at <store>" in refusals[2]
    # a local client (stdio, in process) keeps absolute paths: it opens them
    async with Client(build_server(store_dir, model_roots=[root])) as c:
        assert (await call(c, "list_runs"))["store"] == str(store_dir.resolve())


def test_serving_over_http_marks_clients_remote(monkeypatch, store_dir):
    from mcp_interp.server import app, cli

    seen = []

    def fake_build_server(*args, **kw):
        seen.append(kw)
        raise RuntimeError("stop before serving")

    monkeypatch.setattr(app, "build_server", fake_build_server)
    cli.main(["--store", str(store_dir), "serve", "--http"])
    cli.main(["--store", str(store_dir), "serve"])
    assert [kw["remote"] for kw in seen] == [True, False]
    assert seen[0]["model_roots"] and seen[1]["model_roots"] is None
