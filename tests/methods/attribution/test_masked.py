"""The vectorised masked forward (many edge circuits per forward) against the per-receiver loop it replaced."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mcp_interp.evaluation.ground_truth import planted_case
from mcp_interp.methods.attribution import (
    edge_circuit_metrics,
    edge_mask_allowed,
    masked_forward,
    pair_chunks,
    receivers,
    sender_hooks,
    sender_outputs,
    senders,
    split_inputs,
)
from mcp_interp.methods.core import LogitDiffMetric, shared_prefix

from .edge_loop import loop_masked_forward

TINY = {
    # grouped-query attention, rotary positions, RMSNorm, gated MLP: SmolLM2's shape in miniature
    "gqa_rotary": dict(n_layers=3, d_model=32, n_heads=4, d_head=8, n_key_value_heads=2, d_mlp=48, act_fn="silu",
                       gated_mlp=True, normalization_type="RMS", positional_embedding_type="rotary"),
    # learned positional embedding (the embed sender is token + position), LayerNorm, GELU MLP
    "standard": dict(n_layers=3, d_model=32, n_heads=3, d_head=8, d_mlp=48, act_fn="gelu", normalization_type="LN"),
    "attn_only": dict(n_layers=2, d_model=24, n_heads=3, d_head=8, attn_only=True, normalization_type="LN"),
    # Gemma 2/3: norms before and after each sublayer (a head's write is its share of the normalised output), GQA,
    # q/k norm, soft caps
    "gemma_post_norm": dict(n_layers=3, d_model=32, n_heads=4, d_head=8, n_key_value_heads=2, d_mlp=48,
                            act_fn="gelu_pytorch_tanh", gated_mlp=True, normalization_type="RMS",
                            positional_embedding_type="rotary", use_qk_norm=True,
                            use_normalization_before_and_after=True, attn_scores_soft_cap=5.0,
                            output_logits_soft_cap=3.0),
    # OLMo 2: no norm before a sublayer, one after; q/k norms over whole projections
    "olmo2_post_norm": dict(n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=48, act_fn="silu", gated_mlp=True,
                            normalization_type="RMS", positional_embedding_type="rotary",
                            original_architecture="Olmo2ForCausalLM"),
}


def tiny_case(name: str, b: int = 5, p: int = 7):
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(d_vocab=40, n_ctx=16, device="cpu", initializer_range=0.25, seed=0, **TINY[name])
    model = HookedTransformer(cfg).eval()
    x = torch.randint(0, 40, (b, p))
    xc = x.clone()
    xc[:, 2:] = torch.randint(0, 40, (b, p - 2))  # the pairs share their first tokens, as real pairs do
    metric = LogitDiffMetric(torch.randint(0, 40, (b,)), torch.randint(0, 40, (b,)))
    return model, x, xc, metric


def random_masks(S, R, allowed):
    """Empty, full (allowed edges), full (every pair, including ones no forward can carry), one edge, and random
    circuits of several densities over the allowed edges and over all pairs."""
    g = torch.Generator().manual_seed(1)
    shape = (len(S), len(R))
    one = torch.zeros(shape, dtype=torch.bool)
    i, j = allowed.nonzero()[len(allowed.nonzero()) // 2].tolist()
    one[i, j] = True
    masks = [torch.zeros(shape, dtype=torch.bool), allowed.clone(), torch.ones(shape, dtype=torch.bool), one]
    for density in (0.05, 0.3, 0.7, 0.95):
        masks.append((torch.rand(shape, generator=g) < density) & allowed)
    masks.append(torch.rand(shape, generator=g) < 0.5)
    return torch.stack(masks)


@pytest.mark.parametrize("name", sorted(TINY))
def test_masked_forward_equals_the_per_receiver_loop(name, one_thread):
    model, x, xc, metric = tiny_case(name)
    S, R = senders(model), receivers(model)
    allowed = edge_mask_allowed(model, S, R)
    masks = random_masks(S, R, allowed)
    idx = torch.arange(len(x))
    with split_inputs(model):
        _, cache = model.run_with_cache(xc, names_filter=sender_hooks(model, S))
        other = sender_outputs(model, cache, S)
        want = loop_masked_forward(model, x, other, masks, metric, idx, S, R)
        got = masked_forward(model, x, other, masks, metric, idx, S, R)
        # a budget of one (circuit, example) row per forward: chunking over circuits and over examples
        tiny = masked_forward(model, x, other, masks, metric, idx, S, R, max_bytes=1)
        # the shared first tokens run once, as a frozen key/value cache; alone and with chunking
        pre = masked_forward(model, x, other, masks, metric, idx, S, R, prefix=shared_prefix(x, xc))
        pre_tiny = masked_forward(model, x, other, masks, metric, idx, S, R, max_bytes=1, prefix=2)
        clean = metric.from_logits(model, model(x)[:, -1], idx)
        corrupt = metric.from_logits(model, model(xc)[:, -1], idx)
    assert (want.max(0).values - want.min(0).values).min() > 0.05  # the circuits really differ: the check can fail
    assert (got - want).abs().max() <= 1e-5
    assert (tiny - want).abs().max() <= 1e-5
    assert shared_prefix(x, xc) == 2 and (pre - want).abs().max() <= 1e-5 and (pre_tiny - want).abs().max() <= 1e-5
    # identities: nothing patched is the base run, every allowed edge patched is the other run
    assert (got[0] - clean).abs().max() <= 1e-5 and (got[1] - corrupt).abs().max() <= 1e-4
    # every edge into the logits alone: the senders' writes of the base run must sum to its residual stream (on
    # post-norm blocks only the heads' shares of the normalised output do), so the logits read the other run's
    with split_inputs(model):
        into_logits = allowed & torch.tensor([r.kind == "logits" for r in R])[None, :]
        last = masked_forward(model, x, other, into_logits[None], metric, idx, S, R)
    assert (last[0] - corrupt).abs().max() <= 1e-4


def test_edge_circuit_metrics_on_a_planted_toy_equal_the_loop(one_thread):
    """The faithfulness evaluator (all circuits in one call, several example chunks) against the loop, circuit by
    circuit, on a planted model: random circuits, the empty and the full one, and the planted circuit itself."""
    model, clean, corrupt, metric, meta = planted_case("clean", 4, n=10)
    S, R = senders(model), receivers(model)
    allowed = edge_mask_allowed(model, S, R)
    names = [f"{S[i].name}->{R[j].name}" for i, j in allowed.nonzero().tolist()]
    g = torch.Generator().manual_seed(2)
    keep = torch.rand(6, len(names), generator=g) < torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.99])[:, None]
    planted = torch.tensor([n in meta["important_edges"] for n in names])
    keep = torch.cat([keep, planted[None], torch.zeros(1, len(names), dtype=torch.bool),
                      torch.ones(1, len(names), dtype=torch.bool)])
    got, mx, mc = edge_circuit_metrics(model, S, R, allowed, keep, clean, corrupt, metric, batch_size=4)
    full = torch.zeros(len(keep), *allowed.shape, dtype=torch.bool)
    full[:, allowed] = ~keep
    want = torch.zeros(len(keep))
    with split_inputs(model):
        for pc in pair_chunks(model, clean, corrupt, metric, sender_hooks(model, S), 4, names_x=[]):
            other = sender_outputs(model, pc.cache_c, S)
            want += loop_masked_forward(model, pc.x, other, full, metric, pc.idx, S, R).sum(1)
    want /= len(clean)
    assert (got - want).abs().max() <= 1e-5
    assert got[-1] == pytest.approx(mx, abs=1e-5) and got[-2] == pytest.approx(mc, abs=1e-5)
    assert (got[6] - mc) / (mx - mc) > 0.9  # the planted circuit alone keeps the behaviour


def test_senders_out_of_forward_order_are_refused():
    model, x, xc, metric = tiny_case("attn_only", b=2, p=4)
    S, R = senders(model), receivers(model)
    with pytest.raises(ValueError, match="forward order"):
        masked_forward(model, x, torch.zeros(2, 4, len(S), 24), torch.zeros(1, len(S), len(R), dtype=torch.bool),
                       metric, torch.arange(2), S[::-1], R)


@pytest.mark.parametrize("method", ["eap", "eap_ig", "exact"])
@pytest.mark.parametrize("name", ["gqa_rotary", "standard"])
def test_edge_scores_that_run_the_shared_prefix_once_equal_full_forwards(name, method, one_thread):
    from mcp_interp.methods.attribution import edge_scores
    model, x, xc, metric = tiny_case(name, b=4, p=6)
    fast = edge_scores(model, method, list(x), list(xc), metric, ig_steps=3)
    ref = edge_scores(model, method, list(x), list(xc), metric, ig_steps=3, reuse_prefix=False)
    assert ref.scores.abs().max() > 0.05  # edges carry something: the check can fail
    assert (fast.scores - ref.scores).abs().max() <= 1e-5 * max(1.0, float(ref.scores.abs().max()))


@pytest.mark.parametrize("method", ["eap", "eap_ig"])
@pytest.mark.parametrize("name", ["gqa_rotary", "standard"])
def test_edge_gradients_with_the_path_points_stacked_equal_one_point_per_forward(name, method, one_thread):
    """EAP-IG's path points share forwards (stacked in the batch up to max_tokens); one point per forward is the
    reference. Both with the shared prefix and without."""
    from mcp_interp.methods.attribution import edge_scores
    model, x, xc, metric = tiny_case(name, b=4, p=6)
    for reuse in (True, False):
        ref = edge_scores(model, method, list(x), list(xc), metric, ig_steps=5, reuse_prefix=reuse, max_tokens=1)
        for max_tokens in (None, 2 * 4 * 6):  # all points in one forward; two per forward (and a remainder of 1)
            got = edge_scores(model, method, list(x), list(xc), metric, ig_steps=5, reuse_prefix=reuse,
                              max_tokens=max_tokens)
            assert ref.scores.abs().max() > 0.05
            assert (got.scores - ref.scores).abs().max() <= 1e-5 * max(1.0, float(ref.scores.abs().max()))
