"""The fast path under DAS: cached site activations and a suffix-only forward with an intervention.

The model is frozen, so everything that does not depend on the rotation is computed once
(`prepare`): the source activation at the site (source position), the base activation there (base
position), the base residual stream entering the first block that has to run, and the base run's
keys/values for positions before the intervened one. A training step then runs only what the
intervention can change (`intervened_logits`): blocks from the site on, positions from the
intervened one on (with causal attention every earlier position is as in the base run; later
positions attend to the cached keys/values), and unembeds only the final position. At the END
position that is one token through the remaining layers, instead of two full forwards (base and
source) per example per step.

The intervention is additive: the site's activation becomes s_base + delta, delta computed by the
caller from (s_base, s_src). For resid_pre/resid_post/mlp_out the sum lands directly on the residual
stream entering the start block (mlp_out is only ever added into the residual); for attn_out and
per-head z a forward hook on the site's hook point adds delta inside block `layer`, for the length
of one call (never left on the shared model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from ..core.metrics import final_normed
from ..core.progress import check_cancelled
from ..core.sites import Site
from .block import lean_block, lean_ok, lean_weights, rotate_past_keys

DAS_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "z")


def check_site(model, site: Site) -> None:
    """ValueError unless DAS can intervene at `site` in `model` (one of DAS_KINDS, in range)."""
    if site.kind not in DAS_KINDS:
        raise ValueError(f"DAS does not intervene at {site.kind!r} sites; use one of {', '.join(DAS_KINDS)}")
    site.check(model)


@dataclass
class _Bucket:
    """Examples sharing (length T, base position p): one batched suffix forward."""

    T: int
    p: int
    ex: Tensor                 # example indices (CPU)
    resid: Tensor              # [nb, T - p, d_model] base residual entering the start block
    kv: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # per block from start: keys, values [:p]


@dataclass
class DASCache:
    """Everything about a set of interchange examples that does not depend on the rotation.

    d_site = site.dim(model). Buckets group examples by (length T, base position p); each holds the base
    residual entering the start block [nb, T - p, d_model] and, per block from there, the base run's
    keys and values at positions < p ([nb, p, n_kv_heads, d_head]).
    """

    site: Site
    n: int
    s_base: Tensor    # [n, d_site] base activation at the base position
    s_src: Tensor     # [n, d_site] source activation at the source position
    labels: Tensor    # [n] label token ids (device)
    base_ans: Tensor  # [n] base answer token ids (device)
    buckets: list[_Bucket]
    bucket_of: Tensor  # [n] bucket index (CPU)
    row_of: Tensor     # [n] row inside the bucket (CPU)
    seconds: float = 0.0
    token_layers: int = 0  # of the caching forwards
    lengths: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))  # [n] T per example
    base_pos: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    diff: Tensor | None = None  # [n, d_site] s_src - s_base: all an interchange needs of the two
    block: str = "tl"  # "lean": block.lean_block (past keys stored rotated); "tl": TransformerLens' blocks
    weights: dict = field(default_factory=dict)  # layer -> LayerWeights for the lean block


def _fields(examples) -> dict[str, Any]:
    return {"base": [list(e.base_tokens) for e in examples], "src": [list(e.source_tokens) for e in examples],
            "bpos": [int(e.base_pos) for e in examples], "spos": [int(e.source_pos) for e in examples],
            "label": [int(e.label_id) for e in examples], "base_ans": [int(e.base_answer_id) for e in examples]}


@torch.no_grad()
def prepare(model, examples, site: Site, max_batch: int = 64, block: str = "auto",
            progress=None, should_cancel=None) -> DASCache:
    """Run base and source prompts once (batched by length) and keep what the suffix forward needs.

    examples: objects with base_tokens, source_tokens (same length T), base_pos, source_pos, label_id,
    base_answer_id (tasks.interchange). The source run stops after the site's block. Returns a DASCache.
    Plain no_grad (not inference_mode) so the cached tensors can feed autograd later.
    block: "lean" (block.lean_block), "tl" (TransformerLens' blocks, any architecture), or
    "auto" (lean where it reproduces the model). progress(0.0, message) reports the caching runs;
    should_cancel() -> True raises Cancelled between batches.
    """
    import time

    t0 = time.perf_counter()
    site.check(model)
    if block not in ("auto", "lean", "tl"):
        raise ValueError(f"block must be 'auto', 'lean' or 'tl', not {block!r}")
    if block == "lean" and not lean_ok(model):
        raise ValueError("this model's configuration needs block='tl'")
    use_lean = block == "lean" or (block == "auto" and lean_ok(model))
    cfg, dev = model.cfg, model.cfg.device
    f = _fields(examples)
    n = len(examples)
    if n == 0:
        raise ValueError("no examples")
    for i in range(n):
        T = len(f["base"][i])
        if len(f["src"][i]) != T or T == 0:
            raise ValueError(f"example {i}: base and source must have the same non-zero length")
        if not (0 <= f["bpos"][i] < T and 0 <= f["spos"][i] < T):
            raise ValueError(f"example {i}: position outside the prompt")
    start = site.start_layer
    # the residual entering the first block to run (after the last block: the final residual)
    resid_name = (f"blocks.{start}.hook_resid_pre" if start < cfg.n_layers
                  else f"blocks.{cfg.n_layers - 1}.hook_resid_post")
    names = {site.hook, resid_name}
    d_site = site.dim(model)
    s_base = torch.empty(n, d_site, device=dev, dtype=cfg.dtype)
    s_src = torch.empty(n, d_site, device=dev, dtype=cfg.dtype)
    per_ex: dict[int, tuple[Tensor, list]] = {}
    token_layers = 0
    by_len: dict[int, list[int]] = {}
    for i in range(n):
        by_len.setdefault(len(f["base"][i]), []).append(i)
    for T, idx in sorted(by_len.items()):
        for a in range(0, len(idx), max_batch):
            check_cancelled(should_cancel, "DAS activation caching")
            chunk = idx[a:a + max_batch]
            nb = len(chunk)
            base_t = torch.tensor([f["base"][i] for i in chunk], device=dev)
            src_t = torch.tensor([f["src"][i] for i in chunk], device=dev)
            # the base run: everything (keys/values of every later layer); the source run: up to the site
            kv = TransformerLensKeyValueCache.init_cache(cfg, dev, nb)
            _, cache = model.run_with_cache(base_t, names_filter=lambda nm: nm in names, past_kv_cache=kv,
                                            attention_mask=torch.ones_like(base_t), return_type=None)
            _, src_cache = model.run_with_cache(src_t, names_filter=site.hook, stop_at_layer=site.layer + 1)
            token_layers += nb * T * (cfg.n_layers + site.layer + 1)
            bp = torch.tensor([f["bpos"][i] for i in chunk], device=dev)
            sp = torch.tensor([f["spos"][i] for i in chunk], device=dev)
            rows = torch.arange(nb, device=dev)
            sb, ss = cache[site.hook][rows, bp], src_cache[site.hook][rows, sp]
            if site.kind == "z":
                sb, ss = sb[:, site.head], ss[:, site.head]
            ci = torch.tensor(chunk, device=dev)
            s_base[ci], s_src[ci] = sb, ss
            resid = cache[resid_name]
            for r, i in enumerate(chunk):
                p = f["bpos"][i]
                kvs = [((rotate_past_keys(model, l, kv[l].past_keys[r:r + 1, :p])[0] if use_lean
                         else kv[l].past_keys[r, :p]).clone(), kv[l].past_values[r, :p].clone())
                       for l in range(start, cfg.n_layers)] if p > 0 else []
                per_ex[i] = (resid[r, p:].clone(), kvs)
            del cache, src_cache, kv
            if progress is not None:
                progress(0.0, f"caching base and source runs at {site}: {len(per_ex)}/{n} examples")
    # buckets by (T, p)
    groups: dict[tuple[int, int], list[int]] = {}
    for i in range(n):
        groups.setdefault((len(f["base"][i]), f["bpos"][i]), []).append(i)
    buckets, bucket_of, row_of = [], torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    for b, ((T, p), idx) in enumerate(sorted(groups.items())):
        resid = torch.stack([per_ex[i][0] for i in idx])
        kvs = [] if p == 0 else [(torch.stack([per_ex[i][1][j][0] for i in idx]),
                                  torch.stack([per_ex[i][1][j][1] for i in idx]))
                                 for j in range(cfg.n_layers - start)]
        buckets.append(_Bucket(T, p, torch.tensor(idx), resid, kvs))
        bucket_of[idx] = b
        row_of[idx] = torch.arange(len(idx))
    return DASCache(site, n, s_base, s_src, torch.tensor(f["label"], device=dev),
                    torch.tensor(f["base_ans"], device=dev), buckets, bucket_of, row_of,
                    seconds=time.perf_counter() - t0, token_layers=token_layers,
                    lengths=torch.tensor([len(t) for t in f["base"]]), base_pos=torch.tensor(f["bpos"]),
                    diff=s_src - s_base, block="lean" if use_lean else "tl",
                    weights=lean_weights(model, range(start, cfg.n_layers)) if use_lean else {})


def _pad_first(delta: Tensor, S: int) -> Tensor:
    """[m, *shape] -> [m, S, *shape] with delta at position 0 and zeros after (no in-place ops)."""
    if S == 1:
        return delta[:, None]
    zeros = delta.new_zeros(delta.shape[0], S - 1, *delta.shape[1:])
    return torch.cat([delta[:, None], zeros], dim=1)


def _head_delta(d: Tensor, head: int, n_heads: int) -> Tensor:
    """[m, d_head] -> [m, n_heads, d_head], zero except `head`."""
    onehot = torch.zeros(n_heads, 1, device=d.device, dtype=d.dtype)
    onehot[head] = 1.0
    return onehot[None] * d[:, None, :]


def _add_hook(delta_full: Tensor):
    def hook(_module, _inp, out):
        return out + delta_full.to(out.dtype)
    return hook


def unembed_final(model, resid: Tensor) -> Tensor:
    """Logits [rows, d_vocab] from the final residual [rows, d_model]. A plain matmul with W_U as it is:
    TransformerLens' Unembed copies a tied (transposed) W_U to contiguous memory on every call, which
    for a 49k vocabulary costs more than the rest of a DAS step."""
    x = final_normed(model, resid)
    logits = torch.matmul(x, model.unembed.W_U.to(x.dtype)) + model.unembed.b_U.to(x.dtype)
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    return logits if cap <= 0 else cap * torch.tanh(logits / cap)


def intervened_logits(model, dc: DASCache, ex: Tensor, delta: Tensor | None) -> tuple[Tensor, int]:
    """Final-position logits [len(ex), d_vocab] for examples `ex` (CPU long) with the site's base
    activation shifted by delta [len(ex), d_site] (None: the unintervened base run).

    Returns (logits in the order of `ex`, token-layers run). Differentiable in delta.
    """
    cfg, site = model.cfg, dc.site
    start, L = site.start_layer, cfg.n_layers
    b_ids = dc.bucket_of[ex]
    out: list[Tensor] = []
    order: list[Tensor] = []
    token_layers = 0
    single = len(dc.buckets) == 1
    for b in ([0] if single else b_ids.unique().tolist()):
        sel = torch.arange(len(ex)) if single else (b_ids == b).nonzero().flatten()
        bk = dc.buckets[b]
        rows = dc.row_of[ex[sel]].to(bk.resid.device)
        h = bk.resid[rows]
        S = h.shape[1]
        d = None if delta is None else delta[sel.to(delta.device)].to(h.dtype)
        if d is not None and site.on_residual:
            h = h + _pad_first(d, S)
        for layer in range(start, L):
            if dc.block == "lean":
                z_d = a_d = None
                if d is not None and layer == site.layer and not site.on_residual:
                    if site.kind == "attn_out":
                        a_d = _pad_first(d, S)
                    else:
                        z_d = _pad_first(_head_delta(d, site.head, cfg.n_heads), S)
                past = None if bk.p == 0 else tuple(t[rows] for t in bk.kv[layer - start])
                h = lean_block(model, dc.weights[layer], layer, h, bk.p, past, z_d, a_d)
                token_layers += h.shape[0] * S
                continue
            entry = None
            if bk.p > 0:
                k, v = bk.kv[layer - start]
                entry = TransformerLensKeyValueCacheEntry(k[rows], v[rows], frozen=True)
            handle = None
            if d is not None and layer == site.layer and not site.on_residual:
                blk = model.blocks[layer]
                if site.kind == "attn_out":
                    full, point = _pad_first(d, S), blk.hook_attn_out
                else:
                    full, point = _pad_first(_head_delta(d, site.head, cfg.n_heads), S), blk.attn.hook_z
                handle = point.register_forward_hook(_add_hook(full))
            pos = None
            if cfg.positional_embedding_type == "shortformer":  # positions p..T-1 enter queries and keys, as in TL
                pos = model.pos_embed.W_pos[bk.p:bk.p + S].to(h.dtype)[None].expand(h.shape[0], -1, -1)
            try:
                h = model.blocks[layer](h, shortformer_pos_embed=pos, past_kv_cache_entry=entry)
            finally:
                if handle is not None:
                    handle.remove()
            token_layers += h.shape[0] * S
        out.append(unembed_final(model, h[:, -1]))
        order.append(sel)
    if single:
        return out[0], token_layers
    logits = torch.cat(out)
    inv = torch.empty_like(torch.cat(order))
    inv[torch.cat(order)] = torch.arange(len(inv))
    return logits[inv.to(logits.device)], token_layers


def naive_token_layers(model, dc: DASCache, ex: Tensor) -> int:
    """What a full base + source forward per example would run (the usual hook-based DAS loop)."""
    return int(2 * dc.lengths[ex].sum()) * model.cfg.n_layers


__all__ = ["DAS_KINDS", "DASCache", "check_site", "intervened_logits", "naive_token_layers", "prepare", "unembed_final"]
