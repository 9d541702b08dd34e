"""Artifact store: layout, atomic publish, index, cache, safe file access, recovery, plots."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mcp_interp.artifacts import (
    ArtifactFileNotFound,
    ArtifactStore,
    RunNotComplete,
    RunNotFound,
    StoreError,
    UnsafePath,
    params_hash,
    sanitize_component,
)


@pytest.fixture
def store(tmp_path):
    return ArtifactStore(tmp_path / "store")


def _run(store, tool="locate", task="ioi", model="toy/tiny-random", params=None, **kw):
    h = store.create_run(tool, task, model, params or {"layers": [0, 1], "seed": 0}, seed=0,
                         model_info={"weight_hash": "w1", "n_layers": 2}, task_hash="t1", **kw)
    h.write_json("table", {"x": [1, 2]})
    return h


def test_sanitize_component():
    assert sanitize_component("toy/tiny-random") == "toy__tiny-random"
    assert sanitize_component("hf:/x/y") == "hf-__x__y"
    assert sanitize_component("..") == "_.."
    assert sanitize_component("") == "_"
    assert sanitize_component("a b*c") == "a_b_c"
    long = sanitize_component("gguf:/" + "d/" * 100 + "model.gguf")
    assert len(long) <= 96 and long.endswith("model.gguf")
    for name in ("toy/tiny-random", "hf:/x/y", "../../etc", "a\\b"):
        s = sanitize_component(name)
        assert "/" not in s and "\\" not in s and s not in (".", "..") and not s.startswith(".")


def test_layout_manifest_and_result(store):
    h = _run(store)
    h.write_tensors("acts", {"a": torch.arange(12.0).reshape(3, 4), "b": torch.arange(10)[2:5]},
                    metadata={"site": "resid_pre"})
    h.write_bytes("sub/raw.bin", b"\x00\x01")
    assert h.path("x.txt").parent == h.staging_dir
    rec = h.finish({"summary": "found it", "effect": float("nan")}, {"max_effect": 0.8})
    assert rec.status == "complete" and rec.summary == "found it"
    d = store.root / "ioi" / "toy__tiny-random" / "locate" / rec.run_id
    assert d.is_dir() and rec.rel_path == d.relative_to(store.root).as_posix()
    assert not h.staging_dir.exists()
    assert store.list_files(rec.run_id) == ["acts.safetensors", "manifest.json", "result.json",
                                             "sub/raw.bin", "table.json"]
    assert store.read_result(rec.run_id) == {"summary": "found it", "effect": None}  # strict JSON
    t = load_file(store.resolve_file(rec.run_id, "acts.safetensors"))
    assert torch.equal(t["b"], torch.tensor([2, 3, 4]))
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and m["tool_version"]
    assert m["model"] == {"id": "toy/tiny-random", "weight_hash": "w1", "n_layers": 2}
    assert m["task"] == {"name": "ioi", "hash": "t1"} and m["seed"] == 0
    assert m["params_hash"] == params_hash({"layers": [0, 1], "seed": 0})
    assert set(m["environment"]["packages"]) >= {"torch", "pydantic", "safetensors", "numpy"}
    assert m["timings"]["seconds"] >= 0 and m["files"]["result.json"] > 0
    assert store.get_run(rec.run_id).key_metrics == {"max_effect": 0.8}
    with pytest.raises(StoreError, match="already complete"):
        h.write_json("late", {})  # a published run is immutable
    assert not (d / "late.json").exists()


def test_params_hash_stable():
    assert params_hash({"a": 1, "b": [1, 2]}) == params_hash({"b": [1, 2], "a": 1})
    assert params_hash({"a": 1}) != params_hash({"a": 2})
    assert len(params_hash({})) == 16
    assert params_hash({"x": np.float32(0.5)}) == params_hash({"x": 0.5})


def test_crash_never_reads_complete(tmp_path):
    root = tmp_path / "s"
    s1 = ArtifactStore(root)
    h = _run(s1)  # "crash": never finished
    h.write_tensors("partial", {"a": torch.ones(2)})
    assert s1.get_run(h.run_id).status == "running"
    assert s1.find_cached("locate", "ioi", "toy/tiny-random", h.record.params_hash) is None
    with pytest.raises(RunNotComplete):
        s1.read_result(h.run_id)
    assert s1.list_files(h.run_id) == []
    assert s1.list_runs(status="complete") == []
    # restart: the running row becomes interrupted; the staging dir is ignored by a rebuild
    s2 = ArtifactStore(root)
    assert s2.mark_running_interrupted() == 1
    rec = s2.get_run(h.run_id)
    assert rec.status == "interrupted" and "interrupted" in rec.error
    assert s2.rebuild_index() == 0
    assert s2.get_run(h.run_id).status == "interrupted"
    assert s2.clean_staging(older_than_s=-1) == 1 and not h.staging_dir.exists()


def test_publish_without_index_update_recovers_as_complete(store):
    h = _run(store)
    rec = h.finish({"ok": 1}, {})
    store.index.set_run_status(rec.run_id, "running")  # crash between rename and index write
    store.mark_running_interrupted()
    assert store.get_run(rec.run_id).status == "complete"


def test_fail_and_context_manager(store):
    h = _run(store)
    rec = h.fail("ValueError: bad")
    assert rec.status == "failed" and rec.error == "ValueError: bad"
    assert "failure.json" in store.list_files(rec.run_id)
    assert "manifest.json" not in store.list_files(rec.run_id)
    with pytest.raises(RunNotComplete, match="failed"):
        store.read_result(rec.run_id)
    with pytest.raises(RuntimeError):
        with _run(store) as h2:
            raise RuntimeError("boom")
    assert store.get_run(h2.run_id).status == "failed"
    assert "RuntimeError: boom" in store.get_run(h2.run_id).error
    with _run(store) as h3:
        pass
    assert store.get_run(h3.run_id).status == "failed"


def test_index_filters_and_cache(store):
    a = _run(store, tool="locate").finish({"n": 1}, {})
    b = _run(store, tool="attribute", model="gpt2").finish({"n": 2}, {})
    c = _run(store, tool="locate", params={"layers": [3]}).finish({"n": 3}, {})
    d = _run(store, tool="locate").finish({"n": 4}, {})  # same inputs as a, newer
    _run(store, tool="locate").fail("x")
    ids = [r.run_id for r in store.list_runs()]
    assert ids[:4] == [r.run_id for r in store.list_runs(limit=4)]
    assert len(ids) == 5 and ids[1:] == [d.run_id, c.run_id, b.run_id, a.run_id]
    assert {r.run_id for r in store.list_runs(tool="locate", status="complete")} == {
        a.run_id, c.run_id, d.run_id}
    assert [r.run_id for r in store.list_runs(model="gpt2")] == [b.run_id]
    assert len(store.list_runs(status="failed")) == 1
    assert store.list_runs(task="nope") == []
    hit = store.find_cached("locate", "ioi", "toy/tiny-random", a.params_hash)
    assert hit.run_id == d.run_id
    assert store.find_cached("locate", "ioi", "toy/tiny-random", a.params_hash,
                             task_hash="other") is None
    assert store.find_cached("locate", "ioi", "toy/tiny-random", a.params_hash,
                             task_hash="t1", weight_hash="w1").run_id == d.run_id
    shutil.rmtree(store.run_dir(d.run_id))  # deleted by hand: never served from the cache
    assert store.find_cached("locate", "ioi", "toy/tiny-random", a.params_hash).run_id == a.run_id
    with pytest.raises(RunNotFound, match="no run with id 'zzz'"):
        store.get_run("zzz")
    assert store.size_bytes() > 0


def test_resolve_file_refuses_escapes(store, tmp_path):
    rec = _run(store).finish({"ok": True}, {})
    assert store.resolve_file(rec.run_id, "result.json").is_file()
    assert store.resolve_file(rec.run_id, "./table.json").name == "table.json"
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    d = store.run_dir(rec.run_id)
    os.symlink(secret, d / "link.txt")
    os.symlink(tmp_path, d / "linkdir")
    for bad in ("../x", "../../../../secret.txt", "/etc/passwd", "a/../../b", "result.json\x00",
                "link.txt", "linkdir/secret.txt", "", "C:/Windows"):
        with pytest.raises(UnsafePath):
            store.resolve_file(rec.run_id, bad)
    with pytest.raises(ArtifactFileNotFound, match="result.json"):
        store.resolve_file(rec.run_id, "missing.json")
    assert "link.txt" not in store.list_files(rec.run_id)


def test_rebuild_index(tmp_path):
    root = tmp_path / "s"
    s1 = ArtifactStore(root)
    a = _run(s1).finish({"n": 1}, {"acc": 0.5}, summary="s")
    f = _run(s1, tool="das").fail("oops")
    (root / "index.sqlite").unlink()
    for ext in ("-wal", "-shm"):
        (root / f"index.sqlite{ext}").unlink(missing_ok=True)
    s2 = ArtifactStore(root)  # index missing, runs on disk: rebuilt on open
    ra = s2.get_run(a.run_id)
    assert ra.model_dump(exclude={"seconds"}) == a.model_dump(exclude={"seconds"})
    assert s2.get_run(f.run_id).status == "failed" and s2.get_run(f.run_id).error == "oops"
    assert s2.find_cached("locate", "ioi", "toy/tiny-random", a.params_hash).run_id == a.run_id
    assert s2.rebuild_index() == 2


def test_plots_png(store):
    from mcp_interp.artifacts import plots

    rng = np.random.default_rng(0)
    figs = {
        "big": plots.heatmap(rng.normal(size=(30, 14)), [f"L{i}" for i in range(30)],
                             [f"tok{i}" for i in range(14)], "patching", "normalised effect"),
        "small": plots.heatmap(np.array([[0.1, np.nan], [-0.5, 0.9]]), ["a", "b"], ["x", "y"],
                               "tiny", "v"),
        "heads": plots.heatmap(np.abs(rng.normal(size=(30, 9))), title="heads", center_zero=False),
        "zeros": plots.heatmap(np.zeros((2, 3))),
        "bars": plots.bar_with_ci(["a", "b", "c"], [0.5, 0.2, -0.1], [0.4, 0.1, -0.3],
                                  [0.6, 0.3, 0.0], "IIA", "accuracy"),
        "hbars": plots.bar_with_ci([f"L{i}H{j}" for i in range(5) for j in range(3)],
                                   rng.normal(size=15), title="heads", ylabel="score"),
        "lines": plots.line_plot([0.1, 1, 10, 100], {"EAP": [0.1, 0.5, 0.9, 1.0],
                                                       "EAP-IG": [0.2, 0.6, 0.95, 1.0]},
                                 "faithfulness", "% edges", "f", xscale="log",
                                 ci={"EAP": ([0, 0.4, 0.8, 1], [0.2, 0.6, 1, 1])},
                                 hlines={"full model": 1.0}),
    }
    h = store.create_run("plots", "t", "m", {})
    for name, fig in figs.items():
        p = h.save_figure(name, fig)
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name
    rec = h.finish({}, {})
    assert "big.png" in store.list_files(rec.run_id)
    w, hgt = figs["big"].get_size_inches()
    assert w <= 14 and hgt <= 12


def test_finish_whose_publish_failed_then_fails_never_reads_complete(store, monkeypatch):
    h = _run(store)
    publish = store._publish

    def full_disk_once(staging, rec, marker):
        monkeypatch.setattr(store, "_publish", publish)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_publish", full_disk_once)
    with pytest.raises(OSError):
        with h:
            h.finish({"ok": 1}, {})
    rec = store.get_run(h.run_id)
    assert rec.status == "failed" and "No space left" in rec.error
    assert "manifest.json" not in store.list_files(h.run_id)  # the staged manifest was dropped before publishing
    assert store.rebuild_index() == 1 and store.get_run(h.run_id).status == "failed"


def test_publish_writes_a_pointer_that_another_index_follows(tmp_path):
    root = tmp_path / "s"
    a = ArtifactStore(root)
    b = ArtifactStore(root, index_path=tmp_path / "other" / "index.sqlite")  # opened before the run exists
    rec = _run(a).finish({"n": 1}, {})
    assert json.loads((root / ".runs" / f"{rec.run_id}.json").read_text()) == {"rel_path": rec.rel_path}
    assert b.list_runs() == [] and b.get_run(rec.run_id).status == "complete"  # index miss -> pointer
    assert [r.run_id for r in b.list_runs()] == [rec.run_id]  # adopted
    assert a.url is None and a.remote is None and a.location == str(root)
