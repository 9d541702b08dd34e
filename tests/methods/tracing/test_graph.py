"""The adjacency on tiny random models of several architectures, against a naive reference, and the identity.

Reference: TransformerLens' own forward made into the local replacement model by hooks (`replacement_hooks`:
patterns and norm scales detached, every MLP output replaced by decode + skip + error) and differentiated with
autograd, one target at a time. The batched pull-back (`Backward`) must give the same rows.

The identity, exact in the frozen affine model (see mcp_interp/methods/tracing/replacement.py): for every feature
node and logit node t, value(t) = sum_s adjacency[t, s] + constants[t], with value(t) read from the real model (an
active latent's activation, a logit target's value) and constants[t] the biases and positional embeddings read
through the frozen model.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mcp_interp.methods import features as F
from mcp_interp.methods.tracing import (
    LogitTarget,
    TracingTranscoder,
    attribution_graph,
    dense_activations,
    freeze,
    replacement_hooks,
    trace_footprint,
    tracing_transcoder,
    tracing_transcoders,
)
from mcp_interp.methods.tracing.targets import readout

from ..tiny_models import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

READS = ("resid", "normalized", "mlp_input")


def random_transcoders(model, width: int = 24, k: int = 4, seed: int = 0, activation: str = "topk"):
    """One random skip transcoder per MLP layer, cycling through the three input conventions."""
    d = model.cfg.d_model
    out = {}
    for l in range(model.cfg.n_layers):
        g = torch.Generator().manual_seed(seed + l)
        thr = torch.rand(width, generator=g) * 0.5 if activation == "jumprelu" else None
        out[l] = TracingTranscoder(l, torch.randn(d, width, generator=g) * 0.3, torch.randn(width, generator=g) * 0.1,
                                   torch.randn(width, d, generator=g) * 0.3, torch.randn(d, generator=g) * 0.1,
                                   torch.randn(d, d, generator=g) * 0.1, READS[l % 3], activation,
                                   k if activation == "topk" else None, thr)
    return out


def reference_rows(model, tokens, tcs, graph) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [feature and logit rows, N], values) by autograd through the hooked TransformerLens forward."""
    run = freeze(model, tokens, tcs)
    leaves = {l: dense_activations(run, l).clone().requires_grad_(True) for l in tcs}
    errors = run.errors.clone().requires_grad_(True)
    embed = run.embed.clone().requires_grad_(True)
    reads: dict[int, torch.Tensor] = {}
    hooks = replacement_hooks(model, dataclasses.replace(run, errors=errors), leaves, reads)
    hooks.append(("hook_embed", lambda act, hook: embed[None]))
    logits = model.run_with_hooks(run.tokens[None], fwd_hooks=hooks)[0, -1]
    values = []
    for l, p, f in graph.features.tolist():
        values.append(reads[l][p] @ tcs[l].W_enc[:, f] + tcs[l].b_enc[f])
    for t in graph.targets:
        values.append(logits[t.token] - (logits.mean() if t.counterfactual is None else logits[t.counterfactual]))
    rows = torch.zeros(len(values), graph.n_nodes)
    order = list(tcs)
    for i, v in enumerate(values):
        grads = torch.autograd.grad(v, [leaves[l] for l in order] + [errors, embed], retain_graph=True,
                                    allow_unused=True)
        by_layer = dict(zip(order, grads))
        for j, (l, p, f) in enumerate(graph.features.tolist()):
            gl = by_layer[l]
            rows[i, j] = 0.0 if gl is None else gl[p, f] * graph.activations[j]
        ge = grads[-2] if grads[-2] is not None else torch.zeros_like(errors)
        for l in graph.error_layers:
            for p in range(graph.n_tokens):
                rows[i, graph.error_index(l, p)] = (ge[l, p] * run.errors[l, p]).sum()
        gt = grads[-1] if grads[-1] is not None else torch.zeros_like(embed)
        rows[i, graph.token_start:graph.logit_start] = (gt * run.embed).sum(-1)
    return rows, torch.stack([v.detach() for v in values])


@pytest.mark.parametrize("kind", ["ln", "gqa", "parallel", "shortformer", "gemma3"])
def test_batched_rows_equal_the_autograd_reference(kind):
    """LayerNorm (GPT-2 style), RMSNorm with GQA and rotary (SmolLM2 style), parallel attention and MLP, shortformer
    positions, norms before and after each sublayer (Gemma 3 style, the norms' weights random); transcoders reading
    the stream, the normalised stream and the MLP's input."""
    model = tiny_model(kind)
    with torch.no_grad():  # random post-norm weights (the default 1s would hide a missing one)
        for blk in model.blocks:
            for name in ("ln1_post", "ln2_post"):
                if hasattr(blk, name):
                    getattr(blk, name).w.copy_(torch.rand_like(getattr(blk, name).w) + 0.5)
    tcs = random_transcoders(model)
    tokens = torch.randint(0, model.cfg.d_vocab, (6,), generator=torch.Generator().manual_seed(1))
    targets = [LogitTarget(3), LogitTarget(7, counterfactual=11)]
    g = attribution_graph(model, tokens, tcs, targets, batch_size=5)
    ref, values = reference_rows(model, tokens, tcs, g)
    rows = torch.cat([torch.arange(g.n_features), torch.arange(g.logit_start, g.n_nodes)])
    scale = g.adjacency.abs().max()
    assert g.n_features > 20 and scale > 1
    assert (g.adjacency[rows] - ref).abs().max() <= 1e-4 * scale
    assert (g.values()[rows] - values).abs().max() <= 1e-4 * values.abs().max()  # the hooked model is exact
    # no feature receives from its own layer or above; error and token rows are empty
    depth = g.depth()
    later = depth[None, :] >= depth[:g.n_features, None]
    assert g.adjacency[:g.n_features][later].abs().max() == 0
    assert g.adjacency[g.error_start:g.logit_start].abs().max() == 0


@pytest.mark.parametrize("kind", ["ln", "gqa", "gemma3"])
def test_value_is_the_sum_of_incoming_edges_plus_constants(kind):
    """The identity, on LayerNorm and RMSNorm models, with biases everywhere (the tiny models have random b_O, b_V,
    norm biases, positional embeddings, unembedding bias), for ReLU, TopK and JumpReLU transcoders."""
    model = tiny_model(kind)
    with torch.no_grad():
        model.unembed.b_U.copy_(torch.randn_like(model.unembed.b_U))
        for blk in model.blocks:
            blk.attn.b_O.copy_(torch.randn_like(blk.attn.b_O) * 0.3)
    tokens = torch.randint(0, model.cfg.d_vocab, (9,), generator=torch.Generator().manual_seed(2))
    for activation in ("relu", "topk", "jumprelu"):
        g = attribution_graph(model, tokens, random_transcoders(model, activation=activation),
                              [LogitTarget(5), LogitTarget(2, counterfactual=9)])
        values = g.values()
        rows = torch.cat([torch.arange(g.n_features), torch.arange(g.logit_start, g.n_nodes)])
        assert g.identity_error() <= 1e-4 * max(1.0, float(values[rows].abs().max()))
        assert g.constants[rows].abs().max() > 0.1  # the biases are really there
        with torch.no_grad():
            logits = model(tokens[None])[0, -1]
        assert float(g.target_values[0]) == pytest.approx(float(logits[5] - logits.mean()), rel=1e-5, abs=1e-5)
        assert float(g.target_values[1]) == pytest.approx(float(logits[2] - logits[9]), rel=1e-5, abs=1e-5)


def test_untouched_replacement_model_is_the_model():
    """The hooked replacement model with the run's own latents reproduces the real logits (errors make it exact)."""
    model = tiny_model("gqa")
    tcs = random_transcoders(model)
    tokens = torch.randint(0, model.cfg.d_vocab, (7,), generator=torch.Generator().manual_seed(3))
    run = freeze(model, tokens, tcs)
    with torch.no_grad():
        plain = model(tokens[None])
        replaced = model.run_with_hooks(tokens[None], fwd_hooks=replacement_hooks(model, run))
    assert (plain - replaced).abs().max() < 1e-4
    # the transcoder input of the "mlp_input" convention is the MLP module's own input
    got = {}
    h = model.blocks[2].mlp.register_forward_pre_hook(lambda mod, args: got.setdefault("x", args[0].detach()))
    try:
        with torch.no_grad():
            model(tokens[None])
    finally:
        h.remove()
    assert tcs[2].reads == "mlp_input" and torch.allclose(run.x_in[2], got["x"][0], atol=1e-5)


def test_chunks_and_the_feature_budget():
    model = tiny_model("ln")
    tcs = random_transcoders(model)
    tokens = torch.randint(0, model.cfg.d_vocab, (6,), generator=torch.Generator().manual_seed(4))
    full = attribution_graph(model, tokens, tcs, [LogitTarget(1)], batch_size=64)
    one = attribution_graph(model, tokens, tcs, [LogitTarget(1)], batch_size=1)
    assert torch.allclose(full.adjacency, one.adjacency, atol=1e-5) and one.rows == full.rows
    tiny_chunks = attribution_graph(model, tokens, tcs, [LogitTarget(1)], chunk_mb=0.01)
    assert torch.allclose(full.adjacency, tiny_chunks.adjacency, atol=1e-5)
    # max_feature_nodes: the kept latents' rows are the full graph's rows restricted to the kept nodes
    part = attribution_graph(model, tokens, tcs, [LogitTarget(1)], max_feature_nodes=10, batch_size=4,
                             update_every=1)
    assert part.n_features == 10 and part.n_active == full.n_features
    idx = torch.tensor([full.feature_index(*f) for f in part.features.tolist()])
    keep = torch.cat([idx, torch.arange(full.error_start, full.n_nodes)])
    assert torch.allclose(part.adjacency, full.adjacency[keep][:, keep], atol=1e-5)
    assert part.identity_error() <= 1e-4 * float(part.values().nan_to_num().abs().max())  # dropped inputs counted
    assert full.dropped is None and part.dropped.abs().max() > 0
    # the first latents visited are the ones the logit reads most directly
    direct = full.adjacency[full.logit_index(0), :full.n_features].abs()
    assert int(direct.argmax()) in idx.tolist()


def test_salient_targets_by_default():
    model = tiny_model("ln")
    tokens = torch.randint(0, model.cfg.d_vocab, (5,), generator=torch.Generator().manual_seed(5))
    g = attribution_graph(model, tokens, random_transcoders(model), max_n_logits=3, desired_logit_prob=0.99)
    with torch.no_grad():
        probs = model(tokens[None])[0, -1].softmax(-1)
    top = probs.topk(3)
    assert [t.token for t in g.targets] == top.indices.tolist()[:g.n_logits] and 1 <= g.n_logits <= 3
    assert torch.allclose(g.target_weights, top.values[:g.n_logits], atol=1e-6)


def test_transcoder_formats():
    """sae-lens (ReLU skip, JumpReLU) and sparsify transcoders read as TracingTranscoders that encode alike."""
    from sae_lens.saes.transcoder import (
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
        SkipTranscoder,
        SkipTranscoderConfig,
    )

    torch.manual_seed(0)
    x = torch.randn(5, 32)
    skip = SkipTranscoder(SkipTranscoderConfig(d_in=32, d_sae=40, d_out=32, apply_b_dec_to_input=False))
    skip.cfg.metadata.hook_name = "blocks.1.ln2.hook_normalized"
    jump = JumpReLUTranscoder(JumpReLUTranscoderConfig(d_in=32, d_sae=40, d_out=32, apply_b_dec_to_input=False))
    jump.cfg.metadata.hook_name = "blocks.2.hook_mlp_in"
    with torch.no_grad():
        for tc in (skip, jump):
            for p in tc.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
        jump.threshold.copy_(torch.rand(40) * 0.3)
    a, b = tracing_transcoder(skip), tracing_transcoder(jump)
    assert (a.layer, a.reads, a.activation, b.layer, b.reads, b.activation) == \
        (1, "normalized", "relu", 2, "resid", "jumprelu")
    assert torch.allclose(a.encode(x), skip.encode(x), atol=1e-5) and torch.allclose(b.encode(x), jump.encode(x))
    assert torch.allclose(a.reconstruct(x, a.encode(x)), skip(x), atol=1e-5)
    g = torch.Generator().manual_seed(0)
    w = {"encoder.weight": torch.randn(48, 32, generator=g), "encoder.bias": torch.randn(48, generator=g),
         "W_dec": torch.randn(48, 32, generator=g), "b_dec": torch.randn(32, generator=g),
         "W_skip": torch.randn(32, 32, generator=g)}
    sp = F.SparsifyTranscoder({"k": 6}, w, layer=0)
    c = tracing_transcoder(sp)
    assert (c.layer, c.reads, c.activation, c.k) == (0, "mlp_input", "topk", 6)
    assert torch.allclose(c.encode(x), sp.encode(x), atol=1e-5) and torch.allclose(c.reconstruct(x, c.encode(x)),
                                                                                   sp(x), atol=1e-4)


def test_refusals_name_the_argument():
    model = tiny_model("ln")
    tcs = random_transcoders(model)
    tok = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="targets: token id 50"):
        attribution_graph(model, tok, tcs, [50])
    with pytest.raises(ValueError, match="same token"):
        attribution_graph(model, tok, tcs, [LogitTarget(4, 4)])
    with pytest.raises(ValueError, match="tokens: 40 tokens exceed"):
        attribution_graph(model, torch.zeros(40, dtype=torch.long), tcs, [1])
    with pytest.raises(ValueError, match="tokens: ids"):
        attribution_graph(model, torch.tensor([1, 99]), tcs, [1])
    narrow = {0: TracingTranscoder(0, torch.zeros(16, 4), torch.zeros(4), torch.zeros(4, 16), torch.zeros(16))}
    with pytest.raises(ValueError, match="transcoders: layer 0's transcoder maps 16 -> 16"):
        attribution_graph(model, tok, narrow, [1])
    with pytest.raises(ValueError, match="transcoders: layer 7"):
        tracing_transcoders({7: tcs[0]}, 32, 3)
    with pytest.raises(ValueError, match="reads="):
        TracingTranscoder(0, torch.zeros(32, 4), torch.zeros(4), torch.zeros(4, 32), torch.zeros(32), reads="x")
    for kind, what in (("gemma", "soft cap"), ("olmo2", "normalises each sublayer's output instead of its input")):
        other = tiny_model(kind)
        with pytest.raises(ValueError, match=what):
            attribution_graph(other, tok, {}, [1])
    capped = tiny_model("ln")
    capped.cfg.output_logits_soft_cap = 5.0
    with pytest.raises(ValueError, match="soft cap"):
        attribution_graph(capped, tok, {}, [1])
    attn_only = tiny_model("ln")
    attn_only.cfg.attn_only = True
    with pytest.raises(ValueError, match="attention-only"):
        attribution_graph(attn_only, tok, tcs, [1])


def test_no_transcoders_means_every_mlp_is_an_error_node():
    """Without transcoders the graph still satisfies the identity: tokens and whole-MLP error nodes only."""
    model = tiny_model("gqa")
    tok = torch.randint(0, model.cfg.d_vocab, (5,), generator=torch.Generator().manual_seed(6))
    g = attribution_graph(model, tok, {}, [LogitTarget(3)])
    assert g.n_features == 0 and g.n_errors == 3 * 5
    assert g.identity_error() <= 1e-4 * max(1.0, abs(float(g.target_values[0])))
    u, _ = readout(model, LogitTarget(3))
    assert u.shape == (model.cfg.d_model,)


def test_footprint_grows_with_every_argument():
    cfg = tiny_model("ln").cfg
    base = dict(n_tokens=16, n_active=4000, max_feature_nodes=2000, batch_size=64)
    b = trace_footprint(cfg, **base)
    for name in base:
        assert trace_footprint(cfg, **{**base, name: base[name] * 2}) > b
    # a large graph with a budget: building holds the [rows, sources] matrix twice, the square adjacency and the
    # kept columns' copy; pruning 18 bytes per N x N entry; the rest is small
    n, r, s = 2000 + 3 * 16 + 16 + 10, 2000 + 10, 4000 + 3 * 16 + 16 + 10
    build = (2 * r * s + n * n + r * n) * 4
    assert max(build, 18 * n * n) < b < max(build, 18 * n * n) + 20 * 2**20


def test_progress_and_cancel():
    from mcp_interp.methods.core import Cancelled

    model = tiny_model("ln")
    tcs = random_transcoders(model)
    tokens = torch.randint(0, model.cfg.d_vocab, (6,), generator=torch.Generator().manual_seed(7))
    seen: list[float] = []
    attribution_graph(model, tokens, tcs, [LogitTarget(1)], batch_size=8, progress=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 3
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        attribution_graph(model, tokens, tcs, [LogitTarget(1)], batch_size=8, should_cancel=stop)


def test_split_qkv_inputs_change_nothing():
    """A model left with split q/k/v inputs (ln1 then runs per head) gives the same graph."""
    model = tiny_model("ln")
    tcs = random_transcoders(model)
    tokens = torch.randint(0, model.cfg.d_vocab, (5,), generator=torch.Generator().manual_seed(8))
    plain = attribution_graph(model, tokens, tcs, [LogitTarget(2)])
    model.set_use_split_qkv_input(True)
    try:
        split = attribution_graph(model, tokens, tcs, [LogitTarget(2)])
    finally:
        model.set_use_split_qkv_input(False)
    assert torch.allclose(plain.adjacency, split.adjacency, atol=1e-4)
