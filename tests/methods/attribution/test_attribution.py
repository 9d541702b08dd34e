"""Attribution methods against planted ground truth and identities."""

import numpy as np
import pytest
import torch

from mcp_interp.evaluation.ground_truth import auroc_table, planted_case
from mcp_interp.methods.attribution import (
    Edge,
    area,
    edge_circuit_metrics,
    edge_scores,
    node_circuit_metrics,
    node_scores,
    nodes_for,
    receivers,
    run_attribution,
    senders,
)
from mcp_interp.methods.core import Site, auroc

# ------------------------------------------------------------------ methods on planted circuits

def test_auroc_helper():
    assert auroc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert auroc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert auroc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5


def test_every_method_on_unseen_planted_seeds():
    """Seeds 11 and 12 (not the benchmark's 0..7): exact patching recovers every circuit; each cheap method
    is perfect on the clean control and fails on the decoy built for it."""
    t = auroc_table(seeds=[11, 12], n=8)
    mean = {m: {r: float(np.mean(v)) for r, v in per.items()} for m, per in t.items()}
    for regime in ("clean", "correlated-decoy", "saturated-decoy", "cancelling-pair"):
        assert mean["exact"][regime] >= 0.99
        assert mean["edges:exact"][regime] >= 0.99
    for m in ("atp", "atp_star", "grad", "grad_act", "ig", "act_diff", "edges:eap", "edges:eap_ig"):
        assert mean[m]["clean"] >= 0.99, m
    assert mean["act_diff"]["correlated-decoy"] < 0.9  # correlated decoy fools "what changes"
    for m in ("atp", "atp_star", "grad", "grad_act", "edges:eap"):
        assert mean[m]["saturated-decoy"] < 0.99, m  # large gradient, no effect
    assert mean["ig"]["saturated-decoy"] >= 0.99 and mean["edges:eap_ig"]["saturated-decoy"] >= 0.99
    for m in ("atp", "atp_star", "grad", "grad_act", "ig", "edges:eap", "edges:eap_ig"):
        assert mean[m]["cancelling-pair"] < 0.8, m  # zero gradient, real effect
    assert 0.2 < np.mean([np.mean(v) for v in t["null (exact, scrambled labels)"].values()]) < 0.7


def test_exact_scores_equal_a_plain_hook_loop():
    model, clean, corrupt, metric, meta = planted_case("cancelling-pair", 5, n=6)
    nodes = nodes_for(model, "heads") + nodes_for(model, "mlps")
    ns = node_scores(model, "exact", nodes, clean, corrupt, metric)
    x, xc = torch.stack(clean), torch.stack(corrupt)
    _, cache = model.run_with_cache(x)
    m_cf = metric.from_logits(model, model(xc)[:, -1], torch.arange(6))
    for j, nd in enumerate(nodes):
        name = f"blocks.{nd.layer}.attn.hook_z" if nd.kind == "z" else f"blocks.{nd.layer}.mlp.hook_post"

        def patch(act, hook, nd=nd):
            if nd.kind == "z":
                act[:, :, nd.head] = cache[hook.name][:, :, nd.head]
            else:
                act[:] = cache[hook.name]
            return act

        m = metric.from_logits(model, model.run_with_hooks(xc, fwd_hooks=[(name, patch)])[:, -1], torch.arange(6))
        assert torch.allclose(ns.per_example[:, j], (m - m_cf).detach(), atol=1e-4), nd.name


def test_atp_is_exact_on_a_linear_path_and_ig_sums_to_the_total():
    """No nonlinearity between an MLP's output and the logits: AtP = exact there. IG's completeness: on the
    clean control the mover's IG equals its exact effect."""
    model, clean, corrupt, metric, meta = planted_case("clean", 3, n=8)
    nodes = nodes_for(model, "heads") + nodes_for(model, "mlps")
    ex = node_scores(model, "exact", nodes, clean, corrupt, metric).normalised
    atp = node_scores(model, "atp", nodes, clean, corrupt, metric).normalised
    ig = node_scores(model, "ig", nodes, clean, corrupt, metric, ig_steps=20).normalised
    mlp1 = [n.name for n in nodes].index("MLP1")
    assert float(atp[mlp1]) == pytest.approx(float(ex[mlp1]), abs=1e-4)
    assert torch.allclose(ig, ex, atol=0.06)


def test_edge_identities():
    """Patching every edge from x' reproduces x' exactly; patching none reproduces x; edge scores of exact
    patching equal the masked forward they come from."""
    model, clean, corrupt, metric, meta = planted_case("saturated-decoy", 2, n=6)
    S, R = senders(model), receivers(model)
    es = edge_scores(model, "exact", clean, corrupt, metric)
    n_edges = int(es.allowed.sum())
    keep = torch.stack([torch.zeros(n_edges, dtype=torch.bool), torch.ones(n_edges, dtype=torch.bool)])
    m, mx, mc = edge_circuit_metrics(model, S, R, es.allowed, keep, clean, corrupt, metric)
    assert m[0].item() == pytest.approx(mc, abs=1e-4) and m[1].item() == pytest.approx(mx, abs=1e-4)
    # Node-level circuit of everything = the clean run, of nothing = the counterfactual run.
    nodes = nodes_for(model, "heads") + nodes_for(model, "mlps")
    keep = torch.stack([torch.zeros(len(nodes), dtype=torch.bool), torch.ones(len(nodes), dtype=torch.bool)])
    m, mx, mc = node_circuit_metrics(model, nodes, keep, clean, corrupt, metric)
    assert m[0].item() == pytest.approx(mc, abs=1e-4) and m[1].item() == pytest.approx(mx, abs=1e-4)
    # The top edges by exact patching are the planted circuit's.
    top3 = [es.edge_names()[i] for i in es.flat().abs().argsort(descending=True)[:3].tolist()]
    assert set(top3) == set(meta["important_edges"])


def test_area_is_trapezoid_on_the_fraction_axis():
    assert area([0.0, 0.5, 1.0], [0.0, 1.0, 1.0]) == pytest.approx(0.75)


def test_units_are_sites_and_their_names_render_from_them():
    """Nodes, senders and receivers are core Sites on the hooks attribution patches; names render as before
    (grouped keys and values as LxGy under GQA); a report carries each unit's Site / Edge beside its name."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model, clean, corrupt, metric, meta = planted_case("clean", 3, n=4)
    heads, mlps = nodes_for(model, "heads"), nodes_for(model, "mlps")
    assert heads[5] == Site("z", 1, head=1) and heads[5].name == "L1H1" and heads[5].hook == "blocks.1.attn.hook_z"
    assert mlps[1].name == "MLP1" and mlps[1].hook == "blocks.1.mlp.hook_post"
    assert nodes_for(model, "neurons", layer=1)[7].name == "L1N7"
    pos = nodes_for(model, "positions", layer=1, position_names=["X"])
    assert pos == [Site("resid_pre", 1, position="X")] and pos[0].name == "P:X"
    S, R = senders(model), receivers(model)
    assert [s.name for s in S[:6]] == ["embed", "L0H0", "L0H1", "L0H2", "L0H3", "MLP0"]
    assert S[5].hook == "blocks.0.hook_mlp_out" and R[-1] == Site("logits", 2) and R[8].hook == "blocks.0.hook_v_input"
    assert Edge(S[0], R[8]).name == "embed->L0H0.v"
    gqa = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, n_heads=4, d_head=4, n_key_value_heads=2,
                                                    d_mlp=8, d_vocab=10, n_ctx=8, act_fn="relu", device="cpu"))
    assert [r.name for r in receivers(gqa)] == ["L0H0.q", "L0H1.q", "L0H2.q", "L0H3.q", "L0G0.k", "L0G1.k",
                                                "L0G0.v", "L0G1.v", "MLP0", "logits"]
    rep = run_attribution(model, "eap", "edges", clean, corrupt, metric)
    assert rep.units == [e.name for e in rep.components] and rep.layers == [e.receiver.layer for e in rep.components]
    nodes, edges = rep.circuit_graph()
    top3 = {f"{s}->{r}" + (f".{label}" if label else "") for s, r, label, _ in edges[:3]}
    assert top3 == set(meta["important_edges"])  # the planted circuit: embed->L0Hm.v, L0Hm->MLP1, MLP1->logits
    ends = dict((n, h) for n, h, _ in nodes)
    assert ends["embed"] == -1 and ends["MLP1"] == 1.5 and ends["logits"] == 2
    assert all(r in ends and s in ends for s, r, _, _ in edges) and {e[2] for e in edges} <= {"", "q", "k", "v"}
    rep = run_attribution(model, "atp", "positions", clean, corrupt, metric, torch.zeros(4, 1, dtype=torch.long), ["X"],
                          layer=0, faithfulness=False)
    assert rep.units == ["P:X"] and rep.components == [Site("resid_pre", 0, position="X")]


def test_faithfulness_is_normalised_by_the_empty_circuit_not_the_counterfactual_run():
    """MIB: f(C) = (m(C) - m(empty)) / (m(M) - m(empty)). For node levels the empty circuit is not x' (what the
    units do not cover still sees x): here it keeps 40 % of the gap, and f must still run from 0 (empty) to 1."""
    from mcp_interp.methods.attribution import faithfulness_curves

    mx, mc, m_empty = 3.0, -1.0, 0.6  # the empty circuit keeps (0.6 + 1) / 4 = 40 % of the gap

    def evaluate(keep):
        frac = keep.float().mean(1)  # a circuit's metric grows linearly with its share of units
        return m_empty + (mx - m_empty) * frac, mx, mc

    curves = faithfulness_curves(evaluate, torch.arange(10.0))
    s = curves["signed"]
    assert s.empty == pytest.approx(0.4)
    assert s.faithfulness[-1] == pytest.approx(1.0)  # the full circuit
    assert all(f == pytest.approx(c / 10) for f, c in zip(s.faithfulness, s.counts))  # k units: f = k / 10 from 0
