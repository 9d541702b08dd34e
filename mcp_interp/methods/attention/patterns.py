"""Attention weights read from TransformerLens' `hook_pattern`: for each selected head, the weight from one query
position (per prompt: a named position's token index) to each named key position, with means and 95% bootstrap CIs
over prompts, and heads ranked either by how much they prefer one named position over another (the paired
difference per prompt) or by their largest mean attention to any named position.

`hook_pattern` holds [batch, query head, query, key] after the softmax, so grouped-query attention needs nothing
special (the key-value groups are repeated over their query heads: every query head is reported), and sliding-window
layers (Gemma 3's local layers, `attn_type == "local"`) are already masked there: a key more than `window_size - 1`
tokens back gets weight 0. `unreachable` says, per head and position, on what share of prompts the key could not
be attended at all (after the query, or outside the window), so a 0 is read as masked rather than as ignored.
Memory: one forward per batch of equal-length prompts keeps only the query row of the needed layers
(`attention_footprint`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.footprint import F32, F64, batch_forward_footprint
from ..core.forward import group_by_length
from ..core.progress import Progress
from ..core.stats import bootstrap_ci


@dataclass
class AttentionReport:
    """Attention of `heads` (layer, head) from `from_position` to `positions` on n prompts.

    weights [n, H, P]: per prompt, head and named position; rows [n, H, max_len]: the whole query row (0 past a
    prompt's length, `lengths`); mean / lo / hi [H, P]: mean and 95% bootstrap CI over prompts. The ranking:
    with `prefer` (a, b), score = mean over prompts of weight(a) - weight(b) with its CI and `positive_share` (share of
    prompts where it is > 0); without, score = the largest mean weight over the positions (its CI that position's).
    `order`: head indices, best first. `patterns`: for the top heads (by name), the full [query, key] pattern of each
    prompt in `pattern_prompts`."""

    heads: list[tuple[int, int]]
    names: list[str]
    positions: list[str]
    from_position: str
    weights: np.ndarray
    rows: torch.Tensor
    lengths: list[int]
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    prefer: tuple[str, str] | None
    score: np.ndarray
    score_lo: np.ndarray
    score_hi: np.ndarray
    positive_share: np.ndarray | None
    order: list[int]
    unreachable: np.ndarray
    patterns: dict[str, list[np.ndarray]] = field(default_factory=dict)
    pattern_prompts: list[int] = field(default_factory=list)
    cost: dict = field(default_factory=dict)

    def ranked(self, k: int | None = None) -> list[int]:
        """The first k head indices of the ranking (all when k is None)."""
        return self.order[:k] if k is not None else list(self.order)


def attention_footprint(cfg, n: int, heads: int, seq: int, batch: int = 16) -> float:
    """Peak bytes of `head_attention` on n prompts of up to `seq` tokens for `heads` heads: the kept query rows
    [n, heads, seq] (float32) and per-position weights (float64), plus one batch's forward (residual stream and MLP
    activations, and one layer's scores and pattern [batch, n_heads, seq, seq])."""
    b = min(batch, n)
    forward = batch_forward_footprint(cfg, b, seq)
    return n * heads * seq * (F32 + F64) + forward


def head_attention(model, token_lists: Sequence[Sequence[int]], from_index: Sequence[int],
                   to_index: dict[str, Sequence[int]], heads: Sequence[tuple[int, int]], names: Sequence[str],
                   from_position: str = "END", prefer: tuple[str, str] | None = None, top_patterns: int = 3,
                   pattern_prompts: int = 3, batch_size: int = 16, seed: int = 0,
                   progress: Progress | None = None) -> AttentionReport:
    """Each head's attention from token `from_index[i]` of prompt i to the tokens `to_index[name][i]`.

    token_lists: n prompts (token ids); heads: (layer, head) pairs named `names`; prefer: two names of `to_index` to
    rank heads by the paired difference of their weights. The full patterns of the `top_patterns` best heads are
    read on the first `pattern_prompts` prompts. ValueError on a head or index out of range."""
    t0 = time.perf_counter()
    n, cfg = len(token_lists), model.cfg
    positions = list(to_index)
    _check(cfg, token_lists, from_index, to_index, heads, prefer)
    rows = _query_rows(model, token_lists, from_index, heads, batch_size, progress)
    idx = torch.tensor(np.stack([np.asarray(to_index[p]) for p in positions], axis=1), dtype=torch.long)  # [n, P]
    weights = torch.gather(rows, 2, idx[:, None, :].expand(n, len(heads), len(positions))).double().numpy()
    mean, lo, hi = bootstrap_ci(weights.reshape(n, -1), seed=seed)
    mean, lo, hi = (a.reshape(len(heads), len(positions)) for a in (mean, lo, hi))
    share = None
    if prefer is not None:
        diff = weights[:, :, positions.index(prefer[0])] - weights[:, :, positions.index(prefer[1])]
        score, s_lo, s_hi = bootstrap_ci(diff, seed=seed)
        share = (diff > 0).mean(axis=0)
    else:
        best = mean.argmax(axis=1)
        rows_h = np.arange(len(heads))
        score, s_lo, s_hi = mean[rows_h, best], lo[rows_h, best], hi[rows_h, best]
    order = [int(i) for i in np.argsort(-score, kind="stable")]
    report = AttentionReport(
        heads=list(heads), names=list(names), positions=positions, from_position=from_position, weights=weights,
        rows=rows, lengths=[len(t) for t in token_lists], mean=mean, lo=lo, hi=hi, prefer=prefer, score=score,
        score_lo=s_lo, score_hi=s_hi, positive_share=share, order=order,
        unreachable=_unreachable(model, heads, from_index, to_index))
    report.pattern_prompts = list(range(min(pattern_prompts, n)))
    top = order[:top_patterns]
    full = _full_patterns(model, token_lists, [heads[i] for i in top], report.pattern_prompts)
    report.patterns = {names[i]: p for i, p in zip(top, full)}
    report.cost = {"forwards": n + len(report.pattern_prompts), "heads": len(heads),
                   "seconds": time.perf_counter() - t0}
    return report


def _check(cfg, token_lists, from_index, to_index, heads, prefer) -> None:
    n = len(token_lists)
    if n < 1 or not heads or not to_index:
        raise ValueError("head_attention: needs at least one prompt, one head and one named position")
    for layer, head in heads:
        if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
            raise ValueError(f"head L{layer}H{head} out of range: the model has {cfg.n_layers} layers of "
                             f"{cfg.n_heads} heads")
    for name, idx in [("from", from_index), *to_index.items()]:
        if len(idx) != n or any(not 0 <= int(i) < len(t) for i, t in zip(idx, token_lists)):
            raise ValueError(f"position {name!r}: needs one token index inside each of the {n} prompts")
    if prefer is not None and (len(prefer) != 2 or any(p not in to_index for p in prefer)):
        raise ValueError(f"prefer: two of the named positions {list(to_index)}, got {prefer}")


@torch.inference_mode()
def _query_rows(model, token_lists, from_index, heads, batch_size, progress) -> torch.Tensor:
    """[n, H, max_len]: each prompt's attention row at its query token, for every selected head (float32, CPU).
    One forward per batch of equal-length prompts, stopped after the last needed layer; the hook on each needed
    layer's hook_pattern keeps only the query row."""
    n, device = len(token_lists), model.cfg.device
    layers = sorted({l for l, _ in heads})
    out = torch.zeros(n, len(heads), max(len(t) for t in token_lists))
    done = 0
    for length, members in sorted(group_by_length(token_lists).items()):
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            toks = torch.tensor([list(token_lists[i]) for i in chunk], device=device)
            query = torch.tensor([int(from_index[i]) for i in chunk], device=device)
            kept: dict[int, torch.Tensor] = {}

            def keep(pattern, hook, query=query, kept=kept):
                kept[hook.layer()] = pattern[torch.arange(len(query), device=pattern.device), :, query].float().cpu()

            model.run_with_hooks(toks, return_type=None, stop_at_layer=layers[-1] + 1,
                                 fwd_hooks=[(f"blocks.{l}.attn.hook_pattern", keep) for l in layers])
            for k, (layer, head) in enumerate(heads):
                out[chunk, k, :length] = kept[layer][:, head]
            done += len(chunk)
            if progress:
                progress(done / n, f"attention rows of {done}/{n} prompts")
    return out


@torch.inference_mode()
def _full_patterns(model, token_lists, heads, prompts) -> list[list[np.ndarray]]:
    """Per head of `heads`, its [query, key] pattern on each prompt of `prompts` (one forward per prompt)."""
    if not heads or not prompts:
        return [[] for _ in heads]
    layers = sorted({l for l, _ in heads})
    out: list[list[np.ndarray]] = [[] for _ in heads]
    for i in prompts:
        kept: dict[int, torch.Tensor] = {}

        def keep(pattern, hook, kept=kept):
            kept[hook.layer()] = pattern[0].float().cpu()

        toks = torch.tensor([list(token_lists[i])], device=model.cfg.device)
        model.run_with_hooks(toks, return_type=None, stop_at_layer=layers[-1] + 1,
                             fwd_hooks=[(f"blocks.{l}.attn.hook_pattern", keep) for l in layers])
        for k, (layer, head) in enumerate(heads):
            out[k].append(kept[layer][head].numpy())
    return out


def _unreachable(model, heads, from_index, to_index) -> np.ndarray:
    """[H, P]: share of prompts whose key token a head cannot attend to from the query: after it (causal mask), or
    `window_size` or more tokens back on a sliding-window (local) layer."""
    q = np.asarray(from_index)
    out = np.zeros((len(heads), len(to_index)))
    for k, (layer, _) in enumerate(heads):
        local = getattr(model.blocks[layer].attn, "attn_type", "global") == "local"
        window = model.cfg.window_size
        for p, idx in enumerate(to_index.values()):
            key = np.asarray(idx)
            blocked = (key > q) | ((q - key >= window) if local and window else False)
            out[k, p] = float(np.mean(blocked))
    return out
