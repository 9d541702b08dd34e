"""Direct logit attribution (DLA): what each head, MLP or neuron writes straight into the logit difference.

The final residual stream at the last position is a sum of writes r = sum_u w_u + embeddings + biases, and the
logit difference is m = ((r - mean(r)) / s) . (w_ln * (W_U[:, a] - W_U[:, b])) + b_ln . dW + b_U[a] - b_U[b], where
the final norm's scale s (and, for LayerNorm, its centring) is taken from the run itself. With s frozen, m is linear
in the writes: a unit's direct logit attribution is its write dotted with the readout vector
c = centre(w_ln * dW) / s (centring is self-adjoint, so centre(w_u) . y = w_u . centre(y)). Summed over every unit,
the embeddings and the biases it reproduces the logit difference exactly (the identity the tests check).

Writes: a head's output z_h W_O[h] at the last position (on blocks that normalise the attention output, its share of
the normalised output, core.writes.head_writes), an MLP's hook_mlp_out, a neuron's hidden activation times its W_out
row (its share of the normalised output on post-normed blocks, with that block's norm scale from the run). A head's
write also splits over source positions: z_h = sum_k pattern[last, k] v_k, so DLA_h = sum_k pattern[last, k] v_k . g_h
with g_h = W_O[h] c (per named source position, and the rest of the positions together).

What DLA is not: patching. A unit that acts only through later components (a head whose output a later head reads)
has DLA ~0 however large its causal effect; DLA equals the exact patching effect only for units whose output goes
straight to the logits. The residual stream at a position is not a write, so positions have no DLA. Only a metric
linear in the logits (the logit difference) decomposes; probabilities do not. On models with an output logit soft
cap the writes add up to the logit difference before the cap.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..core.forward import group_by_length, last_position_hook
from ..core.metrics import LogitDiffMetric, Metric, final_normed
from ..core.progress import Progress, check_cancelled
from ..core.sites import Site, n_kv_heads
from ..core.stats import bootstrap_ci
from ..core.writes import attn_out_norm, check_head_shares, head_writes, mlp_out_norm, post_normed

REST = "rest"  # the source positions no name covers


@dataclass
class DirectAttribution:
    """Direct logit attribution of `nodes` on n clean / counterfactual pairs, in logit units.

    clean, corrupt [n, U]: each unit's direct contribution on x and on x'; other_clean, other_corrupt: name -> [n]
    the direct terms of the rest of the stream ("embed", "pos_embed", "biases" and the components of the other
    level: "MLP3" beside heads, "attn3" beside MLPs and neurons), so units + other = the logit difference;
    m_clean, m_corrupt [n]: the metric; logit_diff_clean, logit_diff_corrupt [n]: the logit difference before any
    output soft cap, read from the final residual stream (equal to the metric without a cap);
    source_names: the named source positions then REST (heads only); sources_clean, sources_corrupt [n, U, P]: each
    head's direct contribution through each source position (heads only, else None)."""

    nodes: list[Site]
    clean: Tensor
    corrupt: Tensor
    other_clean: dict[str, Tensor]
    other_corrupt: dict[str, Tensor]
    m_clean: Tensor
    m_corrupt: Tensor
    logit_diff_clean: Tensor
    logit_diff_corrupt: Tensor
    source_names: list[str]
    sources_clean: Tensor | None
    sources_corrupt: Tensor | None
    capped: bool = False
    forwards: int = 0
    seconds: float = 0.0

    @property
    def effect(self) -> Tensor:
        """[n, U] DLA(x) - DLA(x') per example: the change of the unit's direct contribution, in metric units."""
        return self.clean - self.corrupt

    def identity_error(self) -> float:
        """max over examples and both sides of |sum of units + other terms - logit difference|."""
        errs = []
        for units, other, ld in ((self.clean, self.other_clean, self.logit_diff_clean),
                                 (self.corrupt, self.other_corrupt, self.logit_diff_corrupt)):
            total = units.sum(1) + sum(other.values(), torch.zeros_like(ld))
            errs.append(float((total - ld).abs().max()) if len(ld) else 0.0)
        return max(errs)

    def summary(self, seed: int = 0) -> DirectSummary:
        """Means and 95% bootstrap CIs of the clean direct contributions, the other terms and the sources."""
        mean, lo, hi = bootstrap_ci(self.clean.numpy(), seed=seed)
        other = {k: float(v.mean()) for k, v in self.other_clean.items()}
        src = src_score = None
        if self.sources_clean is not None:
            src = self.sources_clean.mean(0).numpy()
            gap = float((self.m_clean - self.m_corrupt).mean())
            diff = (self.sources_clean - self.sources_corrupt).mean(0).numpy()
            src_score = diff / gap if gap else np.full_like(diff, np.nan)
        return DirectSummary(np.asarray(mean), np.asarray(lo), np.asarray(hi), other, list(self.source_names), src,
                             src_score, self.identity_error(), self.capped)


@dataclass
class DirectSummary:
    """mean, lo, hi [U]: each unit's clean direct contribution (logit units) with its 95% bootstrap CI; other: name ->
    mean clean direct term of the rest of the stream; source_names [P]; sources [U, P] mean clean direct
    contribution through each source position and sources_score [U, P] its normalised denoising score
    (mean (DLA_x - DLA_x') / mean (m(x) - m(x'))), heads only (else None); identity_error: see
    `DirectAttribution.identity_error`; capped: the model soft-caps its logits."""

    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    other: dict[str, float]
    source_names: list[str]
    sources: np.ndarray | None
    sources_score: np.ndarray | None
    identity_error: float
    capped: bool


def _check_nodes(nodes: list[Site]) -> None:
    """ValueError unless every node is a head's output, a whole MLP or one neuron of an MLP."""
    for n in nodes:
        if n.position is None and (n.kind == "z" or n.kind == "mlp_post"):
            continue
        if isinstance(n.position, str) or n.kind.startswith("resid"):
            raise ValueError("direct logit attribution scores what a unit writes into the stream; the residual "
                             "stream at a position is not a write, so positions have no direct effect: use heads "
                             "(split by source position), mlps or neurons")
        raise ValueError(f"direct logit attribution scores head outputs, whole MLPs or neurons; {n.name} is none")


def _scale_hook(norm) -> str | None:
    """The hook name of a norm module's scale (None for an identity / missing norm)."""
    hook = getattr(norm, "hook_scale", None)
    return None if hook is None else hook.name


def _readout(model, metric: LogitDiffMetric, idx: Tensor, final_scale: Tensor | None,
             dev) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c [b, d_model], bias [b], dW [b, d_model], db [b]): the frozen-scale readout vector of the logit difference,
    its constant term (final norm bias and unembedding bias), and W_U[:, a] - W_U[:, b], b_U[a] - b_U[b]."""
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    a, b = metric.answer[idx].to(W_U.device), metric.cf_answer[idx].to(W_U.device)
    dW = (W_U[:, a] - W_U[:, b]).T.float().to(dev)  # [b, d_model]
    db = (b_U[a] - b_U[b]).float().to(dev)
    norm = getattr(model, "ln_final", None) if model.cfg.normalization_type is not None else None
    y, bias = dW, db
    if norm is not None:
        w = getattr(norm, "w", None)
        if w is not None:
            y = y * w.float().to(dev)
        if getattr(norm, "b", None) is not None:
            bias = bias + dW @ norm.b.float().to(dev)
        if model.cfg.normalization_type in ("LN", "LNPre"):
            y = y - y.mean(-1, keepdim=True)
        y = y / final_scale.reshape(-1, 1).float()
    return y, bias, dW, db


def _names(model, nodes: list[Site], sources: bool) -> list[str]:
    """Hooks one side's forward caches."""
    cfg = model.cfg
    names = ["hook_embed", f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    if cfg.positional_embedding_type == "standard":
        names.append("hook_pos_embed")
    if cfg.normalization_type is not None:
        names.append(_scale_hook(model.ln_final))
    for l in range(cfg.n_layers):
        names.append(f"blocks.{l}.hook_attn_out")
        if not cfg.attn_only:
            names.append(f"blocks.{l}.hook_mlp_out")
    for n in nodes:
        if n.kind == "z":
            names.append(f"blocks.{n.layer}.attn.hook_z")
            if sources:
                names += [f"blocks.{n.layer}.attn.hook_pattern", f"blocks.{n.layer}.attn.hook_v"]
                norm = attn_out_norm(model, n.layer)
                if norm is not None:
                    names.append(_scale_hook(norm))
        elif n.neuron is not None:
            names.append(f"blocks.{n.layer}.mlp.hook_post")
            norm = mlp_out_norm(model, n.layer)
            if norm is not None:
                names.append(_scale_hook(norm))
    return sorted(set(names))


def _forward(model, toks: Tensor, names: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """No-grad forward caching `names` at the last position (patterns: the last query row; values: every position).
    Returns (final-position logits [b, d_vocab], cache)."""
    cache: dict[str, Tensor] = {}

    def keep(act, hook):
        if hook.name.endswith("hook_v"):
            cache[hook.name] = act.detach()
        elif hook.name.endswith("hook_pattern"):
            cache[hook.name] = act[:, :, -1].detach()
        else:
            cache[hook.name] = act[:, -1].detach()

    with torch.no_grad():
        logits = model.run_with_hooks(toks, fwd_hooks=[(n, keep) for n in names] + [last_position_hook(model)])
    return logits[:, -1], cache


@torch.no_grad()
def _side(model, nodes: list[Site], toks: Tensor, idx: Tensor, metric: LogitDiffMetric, names: list[str],
          pos_idx: Tensor | None) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor, Tensor | None]:
    """One side of a chunk: (units [b, U], other terms {name: [b]}, metric [b], logit difference [b],
    sources [b, U, P] when pos_idx is given, else None).

    Every layer's attention output and MLP output is a unit's write (heads: the layer's head nodes, the other heads
    together as "L3 other heads" and b_O among the biases; neurons likewise) or, when no node is in it, one other
    term ("attn3", "MLP3")."""
    cfg = model.cfg
    logits, cache = _forward(model, toks, names)
    m = metric.from_logits(model, logits, idx).float()
    dev = logits.device
    fscale = cache[_scale_hook(model.ln_final)] if cfg.normalization_type is not None else None
    c, bias, dW, db = _readout(model, metric, idx, fscale, dev)
    # the logit difference before any soft cap, read the ordinary way: final norm, then the two unembedding columns
    ld = (final_normed(model, cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]).float() * dW).sum(-1) + db
    dot = lambda t: torch.einsum("b...d,bd->b...", t.float(), c)  # noqa: E731  [b, ..., d_model] -> [b, ...]
    other = {"embed": dot(cache["hook_embed"])}
    if "hook_pos_embed" in cache:
        other["pos_embed"] = dot(cache["hook_pos_embed"])
    value: dict[str, Tensor] = {}  # node name -> [b]
    for l in range(cfg.n_layers):
        heads = [n for n in nodes if n.kind == "z" and n.layer == l]
        if heads:
            w = dot(head_writes(model, l, cache[f"blocks.{l}.attn.hook_z"]))  # [b, H]
            for n in heads:
                value[n.name] = w[:, n.head]
            left = sorted(set(range(cfg.n_heads)) - {n.head for n in heads})
            if left:
                other[f"L{l} other heads"] = w[:, left].sum(1)
            if not post_normed(model):  # post-normed blocks have no b_O (check_head_shares)
                bias = bias + c @ model.blocks[l].attn.b_O.float().to(dev)
        else:
            other[f"attn{l}"] = dot(cache[f"blocks.{l}.hook_attn_out"])
        if cfg.attn_only:
            continue
        neurons = [n for n in nodes if n.kind == "mlp_post" and n.layer == l and n.neuron is not None]
        whole = [n for n in nodes if n.kind == "mlp_post" and n.layer == l and n.neuron is None]
        for n in whole:
            value[n.name] = dot(cache[f"blocks.{l}.hook_mlp_out"])
        if neurons:
            cn = _mlp_readout_vector(model, l, cache, c)
            mlp = model.blocks[l].mlp
            w = cache[f"blocks.{l}.mlp.hook_post"].float() * (cn @ mlp.W_out.float().to(dev).T)  # [b, d_mlp]
            for n in neurons:
                value[n.name] = w[:, n.neuron]
            left = sorted(set(range(w.shape[1])) - {n.neuron for n in neurons})
            if left and not whole:
                other[f"L{l} other neurons"] = w[:, left].sum(1)
            if not whole:
                bias = bias + (cn * mlp.b_out.float().to(dev)).sum(-1)
        elif not whole:
            other[f"MLP{l}"] = dot(cache[f"blocks.{l}.hook_mlp_out"])
    other["biases"] = bias
    units = torch.stack([value[n.name] for n in nodes], 1)
    sources = None
    if pos_idx is not None:
        per_layer = {l: _sources(model, l, cache, c, pos_idx) for l in sorted({n.layer for n in nodes})}
        sources = torch.stack([per_layer[n.layer][:, n.head] for n in nodes], 1)
    return units, other, m, ld, sources


def _mlp_readout_vector(model, layer: int, cache: dict[str, Tensor], c: Tensor) -> Tensor:
    """The readout vector of MLP `layer`'s raw output (before any post-norm): c, or w * c / s with the post-norm's
    scale s from the run. [b, d_model]"""
    return _through_post_norm(mlp_out_norm(model, layer), cache, c, f"block {layer}'s MLP output")


def _through_post_norm(norm, cache: dict[str, Tensor], c: Tensor, what: str) -> Tensor:
    """The readout vector of a write that passes the post-norm `norm` (None: c itself): w * c / s, the norm's scale s
    from the run. ValueError unless `norm` is an RMS norm."""
    if norm is None:
        return c
    if getattr(norm, "hook_scale", None) is None or hasattr(norm, "b"):
        raise ValueError(f"{what} passes a {type(norm).__name__}; direct attribution below a post-norm is defined for "
                         f"RMS norms only")
    return c * norm.w.float().to(c.device) / cache[_scale_hook(norm)].reshape(-1, 1).float()


def _sources(model, layer: int, cache: dict[str, Tensor], c: Tensor, pos_idx: Tensor) -> Tensor:
    """Each head of `layer`'s direct contribution through each source position: [b, H, P] for the P - 1 named
    positions pos_idx [b, P - 1] and the rest. z_h = sum_k p_k v_k, so DLA_h = sum_k p_k v_k . (W_O[h] c').
    A name whose index is -1 (the position does not occur in that prompt) gets 0, and a token named twice counts
    for its first name only (the later ones get 0), so the P columns always add up to the head."""
    cfg = model.cfg
    attn = model.blocks[layer].attn
    cl = _through_post_norm(attn_out_norm(model, layer), cache, c, f"block {layer}'s attention output")
    g = torch.einsum("hed,bd->bhe", attn.W_O.float().to(c.device), cl)  # [b, H, d_head]
    v = cache[f"blocks.{layer}.attn.hook_v"].float()  # [b, T, H_kv, d_head]
    if v.shape[2] != cfg.n_heads:
        v = v.repeat_interleave(cfg.n_heads // n_kv_heads(cfg), dim=2)
    p = cache[f"blocks.{layer}.attn.hook_pattern"].float()  # [b, H, T]
    per_pos = p * torch.einsum("bthe,bhe->bht", v, g)  # [b, H, T]
    b, T = per_pos.shape[0], per_pos.shape[2]
    idx = pos_idx.to(per_pos.device)
    keep = (idx >= 0) & (idx < T)
    for j in range(1, idx.shape[1]):  # a token already named by an earlier name
        keep[:, j] &= ~(idx[:, :j] == idx[:, j:j + 1]).any(1)
    idx = idx.clamp(0, T - 1)
    named = per_pos.gather(2, idx[:, None, :].expand(b, cfg.n_heads, -1)) * keep[:, None, :]  # [b, H, P-1]
    claimed = torch.zeros(b, T, device=per_pos.device).scatter_add_(1, idx, keep.float()) > 0
    rest = (per_pos * (~claimed)[:, None, :]).sum(-1, keepdim=True)
    return torch.cat([named, rest], -1)


def direct_logit_attribution(model, nodes: list[Site], clean: Sequence[Tensor], corrupt: Sequence[Tensor],
                             metric: Metric, positions: Mapping[str, Tensor] | None = None, batch_size: int = 16,
                             progress: Progress | None = None, should_cancel=None) -> DirectAttribution:
    """Direct logit attribution of `nodes` (all heads' outputs, whole MLPs, or neurons of one MLP layer) on x and x'.

    clean, corrupt: n token sequences [pos] each (x and x' of one pair share a length); metric: a LogitDiffMetric
    (ValueError otherwise: only a metric linear in the logits decomposes); positions: position name -> [n] token
    index, the named source positions of the heads' split (none: only REST). ValueError for positions / q/k/v nodes
    and for post-normed blocks whose writes are not RMS shares (core.writes.check_head_shares)."""
    if not isinstance(metric, LogitDiffMetric):
        name = getattr(metric, "name", type(metric).__name__)
        raise ValueError(f"direct logit attribution decomposes a metric linear in the logits; {name} is not (a "
                         f"softmax of every logit): use the logit difference (logit_diff)")
    _check_nodes(nodes)
    if model.cfg.attn_only and any(n.kind == "mlp_post" for n in nodes):
        raise ValueError("the model is attention-only: it has no MLPs")
    if any(n.kind == "z" for n in nodes):
        check_head_shares(model)
    t0 = time.perf_counter()
    progress = progress or (lambda f, m: None)
    n, U = len(clean), len(nodes)
    heads = bool(nodes) and all(nd.kind == "z" for nd in nodes)  # the source split: a level of heads only
    pnames = list(positions) if (positions and heads) else []
    names = _names(model, nodes, heads)
    out = {k: torch.zeros(n, U) for k in ("x", "c")}
    src = {k: torch.zeros(n, U, len(pnames) + 1) for k in ("x", "c")}
    other: dict[str, dict[str, Tensor]] = {"x": {}, "c": {}}
    m = {k: torch.zeros(n) for k in ("x", "c")}
    ld = {k: torch.zeros(n) for k in ("x", "c")}
    dev = model.cfg.device
    done = 0
    for _, group in sorted(group_by_length([t.tolist() for t in clean]).items()):
        for s in range(0, len(group), batch_size):
            check_cancelled(should_cancel)
            chunk = group[s:s + batch_size]
            idx = torch.tensor(chunk)
            pos_idx = torch.stack([positions[p][idx] for p in pnames], 1) if pnames else \
                torch.zeros(len(chunk), 0, dtype=torch.long)
            for side, toks in (("x", clean), ("c", corrupt)):
                t = torch.stack([toks[i] for i in chunk]).to(dev)
                u, o, mm, dd, sr = _side(model, nodes, t, idx, metric, names, pos_idx if heads else None)
                out[side][idx], m[side][idx], ld[side][idx] = u.cpu(), mm.cpu(), dd.cpu()
                for k, v in o.items():
                    other[side].setdefault(k, torch.zeros(n))[idx] = v.cpu()
                if heads:
                    src[side][idx] = sr.cpu()
            done += len(chunk)
            progress(done / n, f"direct logit attribution: {done}/{n} pairs")
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    return DirectAttribution(nodes, out["x"], out["c"], other["x"], other["c"], m["x"], m["c"], ld["x"], ld["c"],
                             pnames + [REST] if heads else [], src["x"] if heads else None,
                             src["c"] if heads else None, cap > 0, 2 * n, time.perf_counter() - t0)


__all__ = ["REST", "DirectAttribution", "DirectSummary", "direct_logit_attribution"]
