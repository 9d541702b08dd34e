"""EAP and EAP-IG edge score VALUES against an independent per-edge autograd loop (issue 26, item 17).

edges.py defines the score of edge s -> r as the denoising estimate
    mean_i  (s(x_i) - s(x'_i)) . dm/d(input of r)   at x'_i
(EAP-IG: the gradient averaged over the `ig_steps` midpoints of the straight path from x''s token embeddings to x's).
The reference below shares none of the library's machinery (stacked senders, grouped receivers, the shared-prefix
cache, path points stacked in the batch): one hooked forward on x' per edge (per path point for EAP-IG) that adds
eps * (s(x) - s(x')) to r's input alone, and the score is d mean(m) / d eps at eps = 0. A scale or sign error in the
library fails it; comparing the library with itself (prefix reuse on/off) or by ranking would not.
"""

import pytest
import torch

from mcp_interp.methods.attribution import edge_scores
from mcp_interp.methods.core import LogitDiffMetric

from ..tiny_models import tiny_model

B, P, SHARED, STEPS = 4, 6, 2, 3  # pairs, tokens, leading tokens x and x' share (the prefix path runs), IG points


def case(kind: str):
    torch.manual_seed(0)
    model = tiny_model(kind, L=2)
    x = torch.randint(0, 50, (B, P))
    xc = x.clone()
    xc[:, SHARED:] = torch.randint(0, 50, (B, P - SHARED))
    return model, x, xc, LogitDiffMetric(torch.randint(0, 50, (B,)), torch.randint(0, 50, (B,)))


def writes(model, x) -> dict:
    """What each sender writes into the residual stream on x, keyed by the sender's (kind, layer, head):
    token (+ learned position) embedding, a head's z @ W_O, an MLP's output."""
    _, cache = model.run_with_cache(x)
    emb = cache["hook_embed"]
    if model.cfg.positional_embedding_type == "standard":
        emb = emb + cache["hook_pos_embed"]
    out = {("embed", -1, None): emb}
    for l in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            out[("z", l, h)] = cache[f"blocks.{l}.attn.hook_z"][:, :, h] @ model.W_O[l, h]
        out[("mlp_out", l, None)] = cache[f"blocks.{l}.hook_mlp_out"]
    return {k: v.detach() for k, v in out.items()}


def receiver_hook(model, r, eps, push):
    """(hook name, hook) adding eps * push [b, p, d_model] to receiver r's input only."""
    if r.kind in ("q", "k", "v"):  # split inputs: [b, p, heads (kv heads for k / v under GQA), d_model]
        def add(act, hook):
            act = act.clone()
            act[:, :, r.head] = act[:, :, r.head] + eps * push
            return act
        return f"blocks.{r.layer}.hook_{r.kind}_input", add
    name = f"blocks.{r.layer}.hook_mlp_in" if r.kind == "mlp_in" else f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    return name, lambda act, hook: act + eps * push


def reference_scores(model, x, xc, metric, S, R, allowed, ig_steps: int = 0):
    """[S, R] scores, one edge (and one path point) per backward."""
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    try:
        dx, dc = writes(model, x), writes(model, xc)
        e_x, e_c = model.W_E[x].detach(), model.W_E[xc].detach()
        points = [(k + 0.5) / ig_steps for k in range(ig_steps)] if ig_steps else [None]
        rows = torch.arange(len(x))
        out = torch.zeros(len(S), len(R))
        for i, j in allowed.nonzero().tolist():
            s, r = S[i], R[j]
            key = (s.kind, s.layer, s.head)
            push = dx[key] - dc[key]
            for a in points:
                eps = torch.zeros((), requires_grad=True)
                hooks = [receiver_hook(model, r, eps, push)]
                if a is not None:
                    hooks.append(("hook_embed", lambda act, hook, a=a: e_c + a * (e_x - e_c)))
                logits = model.run_with_hooks(xc, fwd_hooks=hooks)[:, -1]
                m = logits[rows, metric.answer] - logits[rows, metric.cf_answer]
                out[i, j] += torch.autograd.grad(m.mean(), eps)[0] / len(points)
        return out
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_hook_mlp_in(False)


@pytest.mark.parametrize("kind", ["ln", "gqa"])
@pytest.mark.parametrize("method", ["eap", "eap_ig"])
def test_edge_scores_equal_a_per_edge_autograd_loop(kind, method, one_thread):
    model, x, xc, metric = case(kind)
    es = edge_scores(model, method, list(x), list(xc), metric, ig_steps=STEPS)
    ref = reference_scores(model, x, xc, metric, es.senders, es.receivers, es.allowed,
                           STEPS if method == "eap_ig" else 0)
    scale = float(ref.abs().max())
    assert scale > 0.1  # the comparison is not between zeros
    assert int((ref[es.allowed] != 0).sum()) > 0.9 * int(es.allowed.sum())
    torch.testing.assert_close(es.scores, ref, rtol=1e-4, atol=1e-5 * scale)
    assert not es.scores[~es.allowed].any()
