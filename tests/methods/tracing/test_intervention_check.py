"""The intervention check's prediction against the frozen local replacement model edited directly, its measurement
against the real model, and the top contexts on the planted trace (known answers)."""

from __future__ import annotations

import pytest
import torch

from mcp_interp.methods.tracing import LogitTarget, attribution_graph, dense_activations, freeze, replacement_hooks
from mcp_interp.methods.tracing.contexts import context_text, top_contexts
from mcp_interp.methods.tracing.interventions import measured_effects, pearson, predicted_effects
from mcp_interp.methods.tracing.targets import target_value
from mcp_interp.toymodels.planted_trace import build_planted_trace, latent_roles, planted_trace_transcoders

from ..tiny_models import tiny_model
from .test_graph import random_transcoders

pytestmark = pytest.mark.usefixtures("one_thread")


def frozen_values(model, run) -> list:
    """Hooks that hold every attention pattern and norm scale at the run's values (`replacement_hooks` only detaches
    them, which is enough for gradients at the run's point but not for a finite edit)."""
    hooks = []
    for l in range(model.cfg.n_layers):
        hooks.append((f"blocks.{l}.attn.hook_pattern", lambda act, hook, l=l: run.patterns[l][None].to(act.dtype)))
        for name, norm in (("ln1", run.ln1[l]), ("ln2", run.ln2[l])):
            if norm.scale is not None:
                hooks.append((f"blocks.{l}.{name}.hook_scale", lambda act, hook, s=norm.scale: s[None].expand_as(act)))
    if run.ln_final.scale is not None:
        hooks.append(("ln_final.hook_scale", lambda act, hook: run.ln_final.scale[None].expand_as(act)))
    return hooks


def edited_replacement_value(model, tokens, tcs, node_feature, factor: float, target) -> float:
    """The target's change in the frozen local replacement model (`replacement_hooks` with patterns and norm scales
    held at the run's values, errors frozen) when one latent becomes factor x itself and every later active latent
    follows its own pre-activation (the active set frozen): iterated layer by layer to the fixed point."""
    run = freeze(model, tokens, tcs)
    l0, p0, f0 = (int(v) for v in node_feature)
    base = {l: dense_activations(run, l) for l in tcs}
    latents = {l: a.clone() for l, a in base.items()}
    latents[l0][p0, f0] *= factor
    for _ in range(model.cfg.n_layers + 1):
        reads: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            logits = model.run_with_hooks(run.tokens[None], fwd_hooks=replacement_hooks(model, run, latents, reads)
                                          + frozen_values(model, run))
        for l in tcs:
            if l > l0:
                pre = reads[l] @ tcs[l].W_enc + tcs[l].b_enc
                latents[l] = torch.where(base[l] != 0, pre, torch.zeros_like(pre))
    with torch.no_grad():
        clean = model.run_with_hooks(run.tokens[None], fwd_hooks=replacement_hooks(model, run))
    return target_value(logits[0, -1], target) - target_value(clean[0, -1], target)


@pytest.mark.parametrize("kind", ["ln", "gqa", "parallel"])
def test_predicted_effects_equal_the_edited_replacement_model(kind):
    model = tiny_model(kind, L=3)
    tcs = random_transcoders(model)
    tokens = torch.tensor([3, 17, 5, 9, 22, 41])
    target = LogitTarget(7, 11)
    g = attribution_graph(model, tokens, tcs, [target])
    nodes = sorted({0, g.n_features // 2, g.n_features - 1, *[int(i) for i in
                                                             (g.features[:, 0] == 0).nonzero().flatten()[:2]]})
    pred = predicted_effects(g, nodes, 0.3)
    for k, i in enumerate(nodes):
        want = edited_replacement_value(model, tokens, tcs, g.features[i], 0.3, target)
        assert float(pred[k]) == pytest.approx(want, abs=1e-4 * max(1.0, abs(want))), (kind, i)
    assert predicted_effects(g, nodes, 1.0).abs().max() == 0  # factor 1 is no edit


def test_measured_effects_are_the_real_model_with_the_error_kept():
    model = tiny_model("ln", L=2)
    tcs = random_transcoders(model)
    tokens = torch.tensor([1, 2, 3, 4, 5])
    g = attribution_graph(model, tokens, tcs, [LogitTarget(9)])
    nodes = list(range(min(5, g.n_features)))
    none, clean, _ = measured_effects(model, tokens, g, tcs, nodes, 1.0)
    assert none.abs().max() == 0 and clean == pytest.approx(float(g.target_values[0]), abs=1e-5)
    got, _, forwards = measured_effects(model, tokens, g, tcs, nodes, 0.0, batch_size=2)
    assert forwards == 3  # the clean copy and five edits, two per forward
    l, p, f = (int(v) for v in g.features[nodes[-1]])

    def ablate(act, hook):
        act = act.clone()
        act[0, p] -= float(g.activations[nodes[-1]]) * tcs[l].W_dec[f]
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(tokens[None], fwd_hooks=[(f"blocks.{l}.hook_mlp_out", ablate)])[0, -1]
    assert float(got[-1]) == pytest.approx(target_value(logits, g.targets[0]) - clean, abs=1e-5)


def test_pearson_with_its_interval_and_where_it_is_undefined():
    r, (lo, hi) = pearson([0, 1, 2, 3, 4], [0.1, 0.9, 2.2, 2.8, 4.1])
    assert 0.99 < r <= 1 and lo < r < hi <= 1
    assert pearson([1, 2, 3], [1, 2, 3]) == (None, (None, None))  # n < 4
    assert pearson([1, 1, 1, 1], [1, 2, 3, 4]) == (None, (None, None))  # a constant side


def test_top_contexts_on_the_planted_trace():
    """f0_a fires with 1 exactly on the letter a at position 1; f1_a and its decoy at '=' after an a."""
    model, tok = build_planted_trace()
    tcs = planted_trace_transcoders()
    from mcp_interp.methods.tracing import tracing_transcoders

    tt = tracing_transcoders(tcs, model.cfg.d_model, model.cfg.n_layers)
    roles = latent_roles(0)
    f0a, f1a, dec_a = roles[0].index("f0:a"), roles[1].index("f1:a"), roles[1].index("decoy:a")
    windows = [tok.encode(s) for s in ("0a1=", "1b2=", "2a3=", "3c0=", "1a2=")]
    got = top_contexts(model, tt, windows, [(0, f0a), (1, f1a), (1, dec_a)], n_top=2)
    assert [(c.window, c.position, c.activation) for c in got[(0, f0a)]] == [(0, 1, 1.0), (2, 1, 1.0)]
    assert [(c.window, c.position) for c in got[(1, f1a)]] == [(0, 3), (2, 3)]
    assert got[(1, dec_a)][0].activation == pytest.approx(3 * got[(1, f1a)][0].activation, abs=1e-5)
    assert top_contexts(model, tt, windows[1:2], [(0, f0a)])[(0, f0a)] == []  # never fires on 'b'
    assert context_text(windows[0], 1, lambda i: tok.decode([i])) == "0\u00aba\u00bb1="
    with pytest.raises(ValueError, match="latents"):
        top_contexts(model, tt, windows, [(0, 99)])


@pytest.mark.parametrize("kind", ["ln", "gqa", "gemma3"])
def test_batched_top_contexts_equal_each_window_frozen_alone(kind, monkeypatch):
    """Windows of different lengths, several per padded batch and several batches: every latent's top contexts are
    those of freezing each window alone (the graph's own read), strongest first, ties to the earlier context."""
    import heapq

    from mcp_interp.methods.tracing import contexts

    model = tiny_model(kind)
    with torch.no_grad():  # ln2's weight and bias random: the MLP-input reading must apply them
        for blk in model.blocks:
            blk.ln2.w.copy_(torch.rand_like(blk.ln2.w) + 0.5)
            if getattr(blk.ln2, "b", None) is not None:
                blk.ln2.b.copy_(torch.randn_like(blk.ln2.b) * 0.3)
    tcs = random_transcoders(model, activation="relu" if kind == "ln" else "topk")
    g = torch.Generator().manual_seed(3)
    windows = [torch.randint(0, model.cfg.d_vocab, (n,), generator=g).tolist() for n in (5, 9, 3, 9, 7, 1, 8)]
    latents = [(l, f) for l in tcs for f in range(0, tcs[l].width, 3)]
    every: dict = {k: {} for k in latents}  # (layer, latent) -> {(window, position): activation}, from freeze
    for w, window in enumerate(windows):
        run = freeze(model, torch.tensor(window), tcs)
        for (l, p, f), a in zip(run.features.tolist(), run.activations.tolist()):
            if (l, f) in every:
                every[(l, f)][(w, p)] = a
    ref = {k: heapq.nlargest(4, ((a, -w, -p) for (w, p), a in v.items())) for k, v in every.items()}
    monkeypatch.setattr(contexts, "BATCH_TOKENS", 20)  # 2 or 3 windows a batch
    assert len(contexts._batches(windows)) >= 3
    got = top_contexts(model, tcs, windows, latents, n_top=4)
    assert sum(len(v) for v in ref.values()) > 20
    for k in latents:  # the same activations in the same order; each context where freeze has it (ties may swap)
        assert [c.activation for c in got[k]] == pytest.approx([a for a, _, _ in ref[k]], rel=1e-5, abs=1e-5), k
        assert all(every[k][(c.window, c.position)] == pytest.approx(c.activation, rel=1e-5, abs=1e-5)
                   for c in got[k]), k
    exact = top_contexts(model, tcs, windows[:1] * 3, latents, n_top=2)  # equal contexts: the earlier wins
    for v in exact.values():
        if v:
            assert v[0].window == 0
        if len(v) == 2 and v[0].position == v[1].position:
            assert [c.window for c in v] == [0, 1]
