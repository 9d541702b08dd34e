"""Exact node attribution runs through the patching engine and returns what one hooked forward per node returns."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mcp_interp.evaluation.ground_truth import planted_case
from mcp_interp.methods.attribution import node_scores, nodes_for
from mcp_interp.methods.core import LogitDiffMetric
from mcp_interp.methods.core.progress import Cancelled

pytestmark = pytest.mark.usefixtures("one_thread")

V = 40


def _tiny(gated: bool) -> HookedTransformer:
    """A random 3-layer model with weights large enough that single heads and neurons move the metric."""
    extra = dict(act_fn="silu", normalization_type="RMS", final_rms=True, positional_embedding_type="rotary",
                 rotary_dim=8, gated_mlp=True, n_key_value_heads=2) if gated else dict(act_fn="gelu",
                                                                                        normalization_type="LN")
    cfg = HookedTransformerConfig(n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=48, d_vocab=V, n_ctx=32,
                                  seed=3, **extra)
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(3)
    return model


def _pairs(lengths, seed=0):
    """Clean/counterfactual pairs differing at two tokens after the first few, with named positions A (the first
    difference), B (token 1, before any difference) and END."""
    g = torch.Generator().manual_seed(seed)
    clean, corrupt, a = [], [], []
    for T in lengths:
        c = torch.randint(0, V, (T,), generator=g)
        x = c.clone()
        k = int(torch.randint(2, T - 3, (1,), generator=g))
        x[k:k + 2] = (c[k:k + 2] + 1 + torch.randint(0, V - 1, (2,), generator=g)) % V
        clean.append(c), corrupt.append(x), a.append(k)
    ans = torch.randint(0, V, (len(lengths),), generator=g)
    positions = {"A": torch.tensor(a), "B": torch.ones(len(lengths), dtype=torch.long),
                 "END": torch.tensor(lengths) - 1}
    return clean, corrupt, LogitDiffMetric(ans, (ans + 1) % V), positions


@pytest.mark.parametrize("gated", [False, True])
def test_engine_equals_the_hooked_loop_on_every_engine_level(gated):
    model = _tiny(gated)
    clean, corrupt, metric, positions = _pairs([9, 9, 12, 12, 12])
    nodes = (nodes_for(model, "heads") + nodes_for(model, "mlps") + nodes_for(model, "neurons", 1)
             + nodes_for(model, "positions", 2, ["A", "B", "END"]))
    fast = node_scores(model, "exact", nodes, clean, corrupt, metric, positions=positions)
    ref = node_scores(model, "exact", nodes, clean, corrupt, metric, positions=positions, use_engine=False)
    assert fast.extra["block"] == "lean" and "engine" not in ref.extra
    assert (fast.per_example - ref.per_example).abs().max() <= 1e-5 * ref.per_example.abs().max()
    assert (fast.m_clean - ref.m_clean).abs().max() <= 1e-5 and (fast.m_corrupt - ref.m_corrupt).abs().max() <= 1e-5
    assert ref.per_example.std() > 0.1  # not vacuous
    b = [n.name for n in nodes].index("P:B")
    assert torch.equal(fast.per_example[:, b], torch.zeros(len(clean)))  # before the difference: nothing to patch
    assert fast.extra["engine"]["skipped"] >= len(clean)
    assert fast.forwards < ref.forwards


def test_engine_equals_the_hooked_loop_on_planted_circuits_and_finds_them():
    for case, seed in (("cancelling-pair", 5), ("saturated-decoy", 2)):
        model, clean, corrupt, metric, meta = planted_case(case, seed, n=6)
        nodes = nodes_for(model, "heads") + nodes_for(model, "mlps")
        fast = node_scores(model, "exact", nodes, clean, corrupt, metric)
        ref = node_scores(model, "exact", nodes, clean, corrupt, metric, use_engine=False)
        assert (fast.per_example - ref.per_example).abs().max() <= 1e-5 * ref.per_example.abs().max()
        top = set(torch.argsort(-fast.normalised.abs())[:len(meta["important"])].tolist())
        assert {nodes[i].name for i in top} == set(meta["important"]), case


def test_qkv_nodes_take_the_hooked_loop_and_progress_and_cancel_reach_the_engine():
    model = _tiny(True)
    clean, corrupt, metric, _ = _pairs([10, 10, 10], seed=1)
    qkv = nodes_for(model, "qkv")
    assert "engine" not in node_scores(model, "exact", qkv[:3], clean, corrupt, metric).extra
    seen = []
    node_scores(model, "exact", nodes_for(model, "heads"), clean, corrupt, metric, progress=lambda f, m: seen.append(f))
    assert len(seen) >= 2 and seen == sorted(seen) and seen[-1] == 1.0
    with pytest.raises(Cancelled):
        node_scores(model, "exact", nodes_for(model, "heads"), clean, corrupt, metric, should_cancel=lambda: True)


@pytest.mark.slow
def test_engine_equals_the_hooked_loop_on_smollm2():
    from mcp_interp.models import ModelPool
    from mcp_interp.tasks.builtin import BUILTIN_TASKS
    from mcp_interp.tools.common import pair_dataset

    lm = ModelPool(device="cpu").get("smollm2-135m")
    _, metric, clean, corrupt = pair_dataset(BUILTIN_TASKS["ioi"], lm, "smollm2-135m", 4, 0, None, "s2_swap",
                                             "logit_diff")
    model = lm.model
    nodes = [nd for nd in nodes_for(model, "heads") if nd.layer in (0, 20, 23, 29)] + nodes_for(model, "mlps")[::7] \
        + nodes_for(model, "neurons", 20)[:8]
    fast = node_scores(model, "exact", nodes, clean, corrupt, metric)
    ref = node_scores(model, "exact", nodes, clean, corrupt, metric, use_engine=False)
    assert (fast.per_example - ref.per_example).abs().max() <= 1e-5 * ref.per_example.abs().max()
    assert fast.extra["engine"]["gflop"] * 3 < fast.extra["engine"]["naive_gflop"]
    # node circuits (heads and MLPs kept or taken from x') as batched rows after the shared prefix, as the hooked loop
    from mcp_interp.methods.attribution import node_circuit_metrics
    units = [nd for nd in nodes if nd.neuron is None]
    share = torch.tensor([[0.0], [0.2], [0.6], [0.9]])  # of the units each circuit keeps
    keep = torch.rand(4, len(units), generator=torch.Generator().manual_seed(0)) < share
    got = node_circuit_metrics(model, units, keep, clean, corrupt, metric)
    want = node_circuit_metrics(model, units, keep, clean, corrupt, metric, use_engine=False)
    assert (got[0] - want[0]).abs().max() <= 1e-5 * want[0].abs().max() and got[0].std() > 0.1
