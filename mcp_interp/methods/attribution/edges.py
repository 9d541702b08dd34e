"""Edge attribution (EAP, EAP-IG) and the masked forward that patches edges exactly.

An edge s -> r carries sender s's output into receiver r's input (components.py: senders and
receivers are core `Site`s, an `Edge` pairs them). Denoising an edge
runs x' and gives receiver r the clean value of s instead of its x' value, all else unchanged:
r's input becomes resid_r + (s(x) - s(x')). Estimates (Syed et al. 2023; Hanna et al. 2024):

  eap      (s(x) - s(x')) . dm/d(input of r) at x'. 2 forwards + 1 backward for every edge at once.
  eap_ig   the same with the gradient averaged along the straight path between the two inputs'
           embeddings (midpoint rule, `ig_steps` points): EAP-IG with input interpolation.
  exact    one masked forward per edge (small graphs only: the planted models have a few hundred).

`masked.masked_forward` is the exact intervention: a forward on `base` tokens where each edge marked in
`masks` carries the sender's value from another run instead of the current one, many masks per forward.
It backs exact edge scores and the faithfulness of edge circuits (everything outside the circuit from x').
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.forward import memory_budget, prefix_cache, prefix_reusable, repeat_cache, shared_prefix
from ..core.metrics import Metric
from ..core.progress import Progress
from ..core.sites import Site
from .components import (
    Edge,
    edge_mask_allowed,
    receiver_slot,
    receivers,
    sender_hooks,
    sender_outputs,
    senders,
    split_inputs,
)
from .masked import masked_forward
from .nodes import pair_chunks

EDGE_METHODS = ("eap", "eap_ig", "exact")
MAX_EXACT_EDGES = 5000


@dataclass
class EdgeScores:
    """Edge scores of one method over n examples.

    senders [S] and receivers [R] are the `Site`s indexing rows and columns; allowed [S, R] bool marks the
    edges that exist (`components.edge_allowed`); scores [S, R] is the mean estimated denoising effect per
    edge in metric units (0 where not allowed); m_clean, m_corrupt [n] the metric on x and x'; forwards /
    backwards count example-forwards (one prompt through the model = 1)."""

    method: str
    senders: list[Site]
    receivers: list[Site]
    allowed: Tensor
    scores: Tensor
    m_clean: Tensor
    m_corrupt: Tensor
    forwards: int = 0
    backwards: int = 0
    seconds: float = 0.0

    @property
    def normalised(self) -> Tensor:
        """[S, R] scores / mean(m(x) - m(x')): 1.0 = the edge alone restores the clean behaviour."""
        return self.scores / (self.m_clean - self.m_corrupt).mean()

    def edges(self) -> list[Edge]:
        """The allowed edges in row-major (sender, receiver) order: the order of `edge_names` and `flat`."""
        return [Edge(self.senders[i], self.receivers[j]) for i, j in self.allowed.nonzero().tolist()]

    def edge_names(self) -> list[str]:
        """Names of the allowed edges ("L0H0->MLP1"), in `edges()` order."""
        return [e.name for e in self.edges()]

    def flat(self) -> Tensor:
        """[n_allowed] normalised scores of the allowed edges, in `edges()` order."""
        return self.normalised[self.allowed]


def _receiver_groups(R: list[Site]) -> dict[str, list[tuple[int, Site]]]:
    """Receivers by hook name (several heads share one q/k/v input hook): hook -> [(column in R, receiver)]."""
    groups: dict[str, list[tuple[int, Site]]] = {}
    for j, r in enumerate(R):
        groups.setdefault(r.hook, []).append((j, r))
    return groups


def edge_scores(model, method: str, clean: Sequence[Tensor], corrupt: Sequence[Tensor], metric: Metric,
                ig_steps: int = 10, batch_size: int = 16, progress: Progress | None = None,
                should_cancel=None, reuse_prefix: bool = True, max_tokens: int | None = None) -> EdgeScores:
    """Score every edge of `model` with `method` (one of EDGE_METHODS, see the module docstring).

    clean, corrupt: n token sequences, [pos] each (x and x' of one pair share a length; pairs of equal length
    are batched, `batch_size` at a time); metric: per-example metric of the final-position logits; reuse_prefix:
    run the tokens a batch's pairs share once (False: every forward runs every token, the reference); max_tokens:
    tokens per gradient forward, EAP-IG's path points stacked up to it (default `grad_tokens`; 1: a point at a time).
    ValueError for an unknown method, or for "exact" on more than MAX_EXACT_EDGES edges."""
    if method not in EDGE_METHODS:
        raise ValueError(f"unknown edge method {method!r}; one of {EDGE_METHODS}")
    S, R = senders(model), receivers(model)
    allowed = edge_mask_allowed(model, S, R)
    if method == "exact" and int(allowed.sum()) > MAX_EXACT_EDGES:
        raise ValueError(f"exact edge patching needs one forward per edge ({int(allowed.sum())} edges here, "
                         f"limit {MAX_EXACT_EDGES}); use eap_ig and check the circuit's faithfulness curve")
    t0 = time.perf_counter()
    n = len(clean)
    total = torch.zeros(len(S), len(R))
    m_x, m_cf = torch.zeros(n), torch.zeros(n)
    fw = bw = done = 0
    groups = _receiver_groups(R)
    s_names = sender_hooks(model, S)
    with split_inputs(model):
        for pc in pair_chunks(model, clean, corrupt, metric, s_names, batch_size, should_cancel):
            idx, x, xc, cx, cc, mc = pc.idx, pc.x, pc.xc, pc.cache_x, pc.cache_c, pc.m_c
            chunk = idx.tolist()
            fw += 2 * len(chunk)
            m_x[idx], m_cf[idx] = pc.m_x, mc
            with torch.no_grad():
                delta = sender_outputs(model, cx, S) - sender_outputs(model, cc, S)  # [b, p, S, d]
            if method == "exact":
                prefix = min(shared_prefix(x, xc), x.shape[1] - 1) if reuse_prefix else 0
                s, f = _exact_edges(model, xc, idx, allowed, cx, S, mc, metric, should_cancel, prefix)
                total += s * len(chunk)
                fw += f
            else:
                prefix = min(shared_prefix(x, xc), x.shape[1] - 1) if reuse_prefix and prefix_reusable(model) else 0
                g, f = _receiver_grads(model, x, xc, idx, groups, R, metric, ig_steps if method == "eap_ig" else 0,
                                       prefix, max_tokens)
                total += torch.einsum("bpsd,bprd->sr", delta[:, prefix:].float(), g.float()).cpu()
                fw, bw = fw + f, bw + f
            done += len(chunk)
            if progress:
                progress(done / n, f"{method}: {done}/{n} examples")
    scores = torch.where(allowed, total / n, torch.zeros(()))
    return EdgeScores(method, S, R, allowed, scores, m_x, m_cf, fw, bw, time.perf_counter() - t0)


def _receiver_grads(model, x, xc, idx, groups, R, metric, ig_steps: int, prefix: int = 0,
                    max_tokens: int | None = None) -> tuple[Tensor, int]:
    """dm/d(receiver input) at x' (ig_steps = 0) or averaged along the embedding path, at the tokens from `prefix` on:
    ([batch, pos - prefix, R, d_model], forwards run). Tokens before `prefix` are the same in x and x', so every point
    of the path shares them: they run once, as a frozen key/value cache, and (sender differences being zero there)
    add nothing to any score. Only the last token's residual is read out: no unembedding at the other tokens. The
    path's points share forwards (stacked in the batch, up to `max_tokens` tokens per forward and backward, default
    `grad_tokens`): one large forward runs far closer to the matmul peak than many small ones."""
    names = list(groups)
    b, p = xc.shape
    prefix = max(0, min(prefix, p - 1)) if prefix_reusable(model) else 0
    past = prefix_cache(model, x[:, :prefix]) if prefix else None
    x, xc = x[:, prefix:], xc[:, prefix:]
    q = p - prefix
    out = torch.zeros(b, q, len(R), model.cfg.d_model, device=xc.device)
    if ig_steps:
        with torch.no_grad():
            e_x, e_c = model.embed(x), model.embed(xc)
        alphas: list[float | None] = [(k + 0.5) / ig_steps for k in range(ig_steps)]
    else:
        alphas = [None]
    per = max(1, min(len(alphas), (max_tokens or grad_tokens(model, xc.device)) // (b * q)))
    per = -(-len(alphas) // -(-len(alphas) // per))  # as many forwards, evened out (10 points at 8: 5 + 5)
    for a0 in range(0, len(alphas), per):
        block = alphas[a0:a0 + per]
        r = len(block)
        acts: dict[str, Tensor] = {}

        def keep(act, hook):
            if not act.requires_grad:
                act.requires_grad_(True)
            acts[hook.name] = act
            return act

        hooks = [(n, keep) for n in names]
        if block[0] is not None:  # the path's points, block-major: rows a*b .. a*b + b-1 are point a
            path = torch.cat([e_c + a * (e_x - e_c) for a in block])
            hooks.insert(0, ("hook_embed", lambda act, hook, path=path: path))
        toks = (xc if block[0] is None else x).repeat(r, 1)
        kw = {} if past is None else {"past_kv_cache": repeat_cache(past, r) if r > 1 else past,
                                      "attention_mask": torch.ones_like(toks)}
        with torch.enable_grad():
            resid = model.run_with_hooks(toks, fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers, **kw)
            m = metric.from_final_resid(model, resid[:, -1], idx.repeat(r))
            grads = torch.autograd.grad(m.sum(), [acts[n] for n in names])
        for n, g in zip(names, grads):
            g = g.detach().view(r, b, *g.shape[1:]).sum(0)
            for j, rcv in groups[n]:
                out[:, :, j] += receiver_slot(rcv, g) / len(alphas)
    return out, len(alphas) * b


def grad_tokens(model, device) -> int:
    """Tokens per forward + backward of the edge gradients, from what one token keeps for the backward: about
    2 copies of the residual per split q/k/v input (every head reads its own) plus ~16 more per layer (3 MB for
    SmolLM2-135M, measured). Budget: 2 GiB on a CPU; on CUDA a quarter of the free memory, at most 16 GiB."""
    cfg = model.cfg
    heads = cfg.n_heads + 2 * (cfg.n_key_value_heads or cfg.n_heads)
    per_token = cfg.n_layers * cfg.d_model * 4 * (2 * heads + 16)
    return max(1, memory_budget(device, 2 << 30, 16 << 30) // per_token)


def _exact_edges(model, xc, idx, allowed, clean_cache, S, m_corrupt, metric, should_cancel, prefix: int):
    """One masked forward per allowed edge (as many edges per batched forward as masked_forward's memory budget
    allows; tokens before `prefix`, where x and x' agree, run once): ([S, R] mean effect in metric units, forwards
    run)."""
    R = receivers(model)
    pairs = allowed.nonzero()
    masks = torch.zeros(len(pairs), len(S), len(R), dtype=torch.bool)
    masks[torch.arange(len(pairs)), pairs[:, 0], pairs[:, 1]] = True
    m = masked_forward(model, xc, sender_outputs(model, clean_cache, S), masks, metric, idx, S, R,
                       should_cancel=should_cancel, prefix=prefix).cpu()
    out = torch.zeros(len(S), len(R))
    out[pairs[:, 0], pairs[:, 1]] = (m - m_corrupt).mean(1)
    return out, len(pairs) * len(xc)
