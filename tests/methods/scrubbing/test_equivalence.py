"""The batched, deduplicated executor gives the results the per-run executor of commit 9c65f61 gave.

`reference_9c65f61.json` holds what that implementation returned on the requests below (planted toys
and a tiny random model: q/k/v paths, resid nodes, position lists, layouts of two lengths, every
ablation, contributions, shortcuts on and off). It was written by running `REQUESTS` through the old
code once; regenerating it from the new code would make this test vacuous, so it is data, not output.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mcp_interp.methods.scrubbing import Scrubber, everything_matters, nothing_matters, scrub_hypothesis
from mcp_interp.methods.scrubbing.executor import CleanRun
from mcp_interp.models.toy import build_toy, get_toy
from mcp_interp.tasks.dataset import build_dataset
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.toymodels.planted import PLANTED_TASK

REFERENCE = Path(__file__).with_name("reference_9c65f61.json")
XY = [{"name": "x", "value": "x"}, {"name": "y", "value": "y"}]
TWO_LENGTHS = {
    "name": "two-lengths", "variables": {"a": {"values": list("abcdef")}, "b": {"values": list("ghijkl")}},
    "templates": ["{a}{b}=", "{a}.{b}="], "answer": "{b}", "positions": {"A": {"variable": "a"}},
    "counterfactuals": [{"name": "ra", "kind": "resample", "variables": ["a"], "changes_answer": False}],
    "metric": "prob"}


def planted_true(head: int = 0) -> dict:
    return {"name": "true", "interp": copy.deepcopy(XY), "output": {"parents": ["mapper"]}, "nodes": [
        {"name": "mapper", "kind": "mlp", "layer": 1, "position": "END", "interp": "y", "parents": ["mover"]},
        {"name": "mover", "kind": "head", "layer": 0, "head": head, "position": "END", "interp": "x",
         "parents": ["emb_x"]},
        {"name": "emb_x", "kind": "embed", "position": "X", "interp": "x"}]}


def mixed() -> dict:
    """q/k/v paths, a resid node, position lists, leaves, expressions, an MLP reading a head at all positions."""
    return {"name": "mixed", "interp": XY + [{"name": "xd", "value": "[x, int(d1) > 4]"}],
            "output": {"parents": ["mlp1", "r1"]},
            "nodes": [
                {"name": "mlp1", "kind": "mlp", "layer": 1, "position": "END", "interp": "y", "parents": ["h00", "m0"]},
                {"name": "h00", "kind": "head", "layer": 0, "head": 0, "position": ["END", 2], "interp": "x",
                 "inputs": {"k": ["emb"], "v": ["emb_x"], "q": ["emb_end"]}},
                {"name": "m0", "kind": "mlp", "layer": 0, "position": "all", "interp": "xd", "parents": ["h01"]},
                {"name": "h01", "kind": "head", "layer": 0, "head": 1, "position": "END", "interp": "x",
                 "parents": ["emb_x"]},
                {"name": "r1", "kind": "resid", "layer": 1, "position": [0, 1], "interp": "xd", "parents": ["emb"]},
                {"name": "emb", "kind": "embed", "position": "all"},
                {"name": "emb_x", "kind": "embed", "position": "X", "interp": "x"},
                {"name": "emb_end", "kind": "embed", "position": -1, "interp": "y"}]}


def two_lengths_mixed() -> dict:
    """On a random model (nothing saturates): q/k/v paths, MLPs reading heads, heads sharing a layer."""
    return {"name": "tl-mixed", "interp": [{"name": "a", "value": "a"}, {"name": "b", "value": "b"}],
            "output": {"parents": ["m1", "h10", "h12"]},
            "nodes": [
                {"name": "m1", "kind": "mlp", "layer": 1, "position": "END", "interp": "b", "parents": ["h10", "m0"]},
                {"name": "h10", "kind": "head", "layer": 1, "head": 0, "position": "END", "interp": "b",
                 "inputs": {"q": ["e_end"], "k": ["h00", "e_a"], "v": ["e_all"]}},
                {"name": "h12", "kind": "head", "layer": 1, "head": 2, "position": "END", "parents": ["h00", "m0"]},
                {"name": "m0", "kind": "mlp", "layer": 0, "position": ["A", "END"], "interp": "a",
                 "parents": ["h00"]},
                {"name": "h00", "kind": "head", "layer": 0, "head": 0, "position": "all", "interp": "a",
                 "parents": ["e_all"]},
                {"name": "e_all", "kind": "embed", "position": "all"},
                {"name": "e_a", "kind": "embed", "position": "A", "interp": "a"},
                {"name": "e_end", "kind": "embed", "position": "END", "interp": "b"}]}


def _planted(regime: str, n: int):
    model, tok = build_toy(get_toy(f"planted-{regime}"))
    return model, build_dataset(TaskSpec.model_validate(PLANTED_TASK), tok, n, seed=0)


def _two_lengths():
    model, tok = build_toy(get_toy("tiny-random"))
    return model, build_dataset(TaskSpec.model_validate(TWO_LENGTHS), tok, 40, seed=0)


# name -> (model and dataset, hypothesis (a function of the model), scrub_hypothesis keywords)
REQUESTS = {
    "planted-true": (lambda: _planted("clean", 64), lambda m: planted_true(0), {"seeds": (0, 1, 2)}),
    "planted-decoy": (lambda: _planted("correlated-decoy", 64), lambda m: planted_true(1), {"seeds": (0, 1)}),
    "mixed": (lambda: _planted("correlated-decoy", 48), lambda m: mixed(), {"seeds": (0, 1)}),
    "mixed-no-shortcuts": (lambda: _planted("correlated-decoy", 24), lambda m: mixed(),
                           {"seeds": (3,), "shortcuts": False}),
    "everything": (lambda: _planted("clean", 32), everything_matters, {"seeds": (0, 1), "contributions": False}),
    "everything-contributions": (lambda: _planted("clean", 16), everything_matters, {"seeds": (0,)}),
    "everything-no-shortcuts": (lambda: _planted("clean", 16), everything_matters,
                                {"seeds": (0,), "contributions": False, "shortcuts": False, "ablations": ("mean",)}),
    "nothing": (lambda: _planted("clean", 32), nothing_matters, {"seeds": (0, 1)}),
    "two-lengths-everything": (_two_lengths, everything_matters,
                               {"seeds": (0,), "contributions": False, "shortcuts": False}),
    "two-lengths-mixed": (_two_lengths, lambda m: two_lengths_mixed(), {"seeds": (0, 1, 2)}),
    "two-lengths-embed": (_two_lengths, lambda m: {"interp": [{"name": "b", "value": "b"}], "nodes": [
        {"name": "e", "kind": "embed", "position": "A", "interp": "b"}], "output": {"parents": ["e"]}},
        {"seeds": (0, 1)}),
}


def run_request(name: str) -> dict:
    """The numbers of one request's result: its summary without timings, and the per-example arrays."""
    load, hyp, kw = REQUESTS[name]
    model, ds = load()
    res = scrub_hypothesis(model, ds, hyp(model), **kw)
    out = res.summary()
    out.pop("seconds")
    out["tree"].pop("rows_run")  # work done, which the batched executor reduces
    out["per_example"] = {k: np.asarray(v).tolist() for k, v in res.per_example.items()}
    out["per_example"] |= {f"{m}_{k}": getattr(s, f"per_example_{k}").tolist()
                           for m, s in res.ablations.items() for k in ("loss", "metric")}
    return out


def _assert_close(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            _assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(got, str):
        assert got is not None and (got == want or abs(got - want) <= 1e-5 or np.isnan(want) and np.isnan(got)), \
            f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.parametrize("name", list(REQUESTS))
def test_same_results_as_the_per_run_executor(name):
    want = json.loads(REFERENCE.read_text())[name]
    _assert_close(run_request(name), want, name)


def test_layouts_of_one_length_share_the_clean_forward():
    """CleanRun.of_groups batches equal-length token sets into one forward; each part equals its own run."""
    model, ds = _planted("clean", 24)
    toks = torch.tensor([e.tokens for e in ds.examples])
    parts = CleanRun.of_groups(model, [toks[:10], toks[10:]])
    for part, sub in zip(parts, (toks[:10], toks[10:])):
        alone = CleanRun(model, sub)
        assert part.n == alone.n and set(part.act) == set(alone.act)
        for k in alone.act:
            torch.testing.assert_close(part.act[k], alone.act[k], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(part.mean_resid(("pre", 1)), alone.mean_resid(("pre", 1)), atol=1e-5, rtol=1e-5)


def test_rows_shared_across_seeds_modes_and_variants_are_computed_once():
    model, ds = _planted("clean", 32)
    sc = Scrubber(model, ds)
    scrub_hypothesis(model, ds, mixed(), seeds=(0, 1), scrubber=sc)
    assert 0 < sc.rows_run < sc.rows_asked / 2  # zero / mean rows do not depend on the random input


if __name__ == "__main__":  # how the reference was written (on commit 9c65f61's scrubbing package)
    REFERENCE.write_text(json.dumps({k: run_request(k) for k in REQUESTS}, indent=1) + "\n")
