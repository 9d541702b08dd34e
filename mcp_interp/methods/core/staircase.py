"""The fast path of activation patching: cached base/source runs and the staircase runner.

For one length bucket the base run (corrupt when denoising) and the source run (clean when
denoising) go through the model once, as one batch, caching what the sweep needs: the residual
stream entering each patched layer, the patched sites themselves, and every layer's KV cache
entry (exactly what attention appends, i.e. post QK-norm, pre-rotary keys).

A patch at (layer l, token p) leaves everything before layer l, and every position before p,
as in the base run. So a row of work is (example, cell): it starts from the cached base residual
at layer l, positions p..T-1 only, and runs blocks l..L-1 attending to the base run's cached
keys/values for positions < p. Rows with the same p share one batch; sorted by start layer they
form a staircase: rows join the batch at their own layer (before that they equal the base run,
so they need no computation), and each block runs once over all rows present.

Shapes: nb = examples in a length bucket, T = their token length, R = rows in a batch, S = T - p
recomputed positions of a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from .block import fast_block, past_kv, segments, write_patch
from .sites import Site
from .writes import mlp_readout

# The site kinds activation patching covers, and the integer code each carries inside the engine's row
# tensors (Rows.site) and patch lists (fast_block's `patches`). Internal: the public vocabulary is `Site`.
# mlp_post (one neuron or all) is written as the mlp_out its patched hidden activations produce (`mlp_readout`).
SITE_CODES = {"resid_pre": 0, "attn_out": 1, "mlp_out": 2, "z": 3, "mlp_post": 4}


def act_name(model, site: Site) -> str:
    """TransformerLens hook name holding `site`'s activation ([batch, pos, d_model], or [batch, pos, n_heads,
    d_head] for z). Special case: resid_pre at layer n_layers is the final residual stream
    (blocks.{n_layers-1}.hook_resid_post), the input of ln_final / the unembedding."""
    n = model.cfg.n_layers
    if site.kind == "resid_pre" and site.layer >= n:
        return f"blocks.{n - 1}.hook_resid_post"
    return site.hook


def _hook_module(model, site_code: int, layer: int):
    blk = model.blocks[layer]
    return {1: blk.hook_attn_out, 2: blk.hook_mlp_out, 3: blk.attn.hook_z}[site_code]


# ---------------------------------------------------------------- FLOP model (what is really run)

def block_flops_per_token(cfg) -> int:
    """Matmul FLOPs of one block for one token, excluding the attention score/mix (see below)."""
    h, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model
    hkv = cfg.n_key_value_heads or h
    proj = 2 * d * dh * (2 * h + 2 * hkv)  # Q, O and K, V projections
    mlp = 0 if cfg.attn_only else 2 * d * cfg.d_mlp * (3 if cfg.gated_mlp else 2)
    return proj + mlp


def attn_core_flops(cfg, q_len: int, k_len: int) -> int:
    """QK^T and pattern @ V for one sequence (TL computes the full masked rectangle)."""
    return 4 * cfg.n_heads * cfg.d_head * q_len * k_len


def rows_block_flops(cfg, seq_q: int, seq_k: int, last_only: bool) -> int:
    """One recomputed row through one lean block: seq_q new tokens attending to seq_k keys; last_only (the final
    block): keys and values of every new token, everything else at the last token only."""
    if not last_only:
        return seq_q * block_flops_per_token(cfg) + attn_core_flops(cfg, seq_q, seq_k)
    kv = 2 * cfg.d_model * cfg.d_head * 2 * (cfg.n_key_value_heads or cfg.n_heads)
    return seq_q * kv + block_flops_per_token(cfg) - kv + attn_core_flops(cfg, 1, seq_k)


def forward_flops(cfg, batch: int, seq: int, unembed_cols: int) -> int:
    """A full forward pass of `batch` sequences, unembedding `unembed_cols` columns at every position."""
    per_layer = seq * block_flops_per_token(cfg) + attn_core_flops(cfg, seq, seq)
    return batch * (cfg.n_layers * per_layer + seq * 2 * cfg.d_model * unembed_cols)


# ---------------------------------------------------------------- cached base + source run

@dataclass
class BucketCache:
    """The base and source runs of one length bucket, run once as one batch of 2 nb sequences.

    acts holds each cached hook's activation for both runs stacked ([2 nb, T, d_model], or [2 nb, T,
    n_heads, d_head] for z): the run computed first in rows [0, nb), the other in [nb, 2 nb); base_first says
    which is the base run. kv is the KV cache of both runs at every layer (keys/values as attention appends
    them: post QK-norm, pre-rotary), rows as in acts.
    """

    nb: int                 # examples in the bucket
    T: int
    acts: dict[str, Tensor]  # hook name -> [2nb, T, ...]
    kv: TransformerLensKeyValueCache
    base_first: bool = True
    _past: dict = field(default_factory=dict)

    @property
    def base_row0(self) -> int:
        """The first row of the base run in acts and kv (0 or nb)."""
        return 0 if self.base_first else self.nb

    def _rows(self, base: bool) -> slice:
        a = self.base_row0 if base else self.nb - self.base_row0
        return slice(a, a + self.nb)

    def swapped(self) -> "BucketCache":
        """The same runs with base and source exchanged (no copy): a noising sweep reuses a denoising one's runs."""
        return BucketCache(self.nb, self.T, self.acts, self.kv, not self.base_first)

    def nbytes(self) -> int:
        """Memory held: cached activations, both runs' keys/values, and the lean block's laid-out copies."""
        ts = [*self.acts.values(), *(t for e in self.kv.entries for t in (e.past_keys, e.past_values)),
              *(t for kv in self._past.values() for t in kv)]
        return sum(t.numel() * t.element_size() for t in ts)

    def past(self, model, layer: int) -> tuple[Tensor, Tensor]:
        """The base run's rotated keys [nb, n_kv_heads, d_head, T] and values [nb, n_kv_heads, T, d_head] at
        `layer`, laid out for the lean block (computed once per layer, then reused)."""
        if layer not in self._past:
            self._past[layer] = past_kv(model, self.kv[layer], self._rows(True), layer)
        return self._past[layer]

    def base(self, name: str) -> Tensor:
        """The base run's activation at hook `name`: [nb, T, ...]."""
        return self.acts[name][self._rows(True)]

    def src(self, name: str) -> Tensor:
        """The source run's activation at hook `name`: [nb, T, ...]."""
        return self.acts[name][self._rows(False)]


@torch.inference_mode()
def cached_run(model, base_tokens: Tensor, src_tokens: Tensor, names: set[str]) -> BucketCache:
    """One forward of base_tokens [nb, T] and src_tokens [nb, T] together, caching the hooks in `names`
    and every layer's keys/values; no logits are computed (return_type=None)."""
    toks = torch.cat([base_tokens, src_tokens]).to(model.cfg.device)
    kv = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(toks))
    # An explicit all-ones mask: no pad-token masking, no tokenizer needed.
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n in names, past_kv_cache=kv,
                                    attention_mask=torch.ones_like(toks), return_type=None)
    acts = {n: cache[n] for n in names}
    return BucketCache(nb=len(base_tokens), T=toks.shape[1], acts=acts, kv=kv)


# ---------------------------------------------------------------- staircase runner

@dataclass
class Rows:
    """Work items sharing one start token p, sorted by start layer: one (example, cell) pair per row.

    Every field is a [R] long tensor (CPU). A row patches token p only, or (every == 1) every position
    from p on: a cell patched at all positions starts at the first token where its activation differs.
    """

    ex: Tensor     # local example index in the bucket
    cell: Tensor   # column in the output
    layer: Tensor
    site: Tensor   # SITE_CODES of the cell's kind
    head: Tensor   # -1 unless z
    neuron: Tensor  # -1 unless one neuron of mlp_post
    every: Tensor  # 1: patch positions p..T-1; 0: position p only

    FIELDS = ("ex", "cell", "layer", "site", "head", "neuron", "every")

    def __len__(self) -> int:
        return len(self.ex)

    def _take(self, o) -> "Rows":
        return Rows(*(getattr(self, f)[o] for f in self.FIELDS))

    def sorted(self) -> "Rows":
        """The same rows, stably sorted by start layer (the staircase order `run_rows` needs)."""
        return self._take(torch.argsort(self.layer, stable=True))

    def slice(self, a: int, b: int) -> "Rows":
        """Rows a..b-1."""
        return self._take(slice(a, b))


# Tokens of one cached base + source run when the caller sets no bound (both runs: 2 x the examples' tokens). The
# patching engine and the circuit runner bucket alike, so they share cached runs.
CACHED_RUN_TOKENS = 8192


def default_max_rows(device) -> int:
    """Query tokens per batched forward of recomputed rows when the caller sets none. On a CPU a block's
    elementwise passes (norms, rotary, SiLU, residual adds) then stay within cache: 2k ran SmolLM2's every-head
    sweep 1.3x faster than 16k at the same FLOPs (benchmarks/exact_attribution.py); a GPU wants large batches."""
    return 16384 if torch.device(device).type == "cuda" else 2048


def chunk_bounds(n_rows: int, seq_q: int, seq_k: int, max_rows: int) -> list[tuple[int, int]]:
    """Split n_rows rows (seq_q recomputed positions each, attending to seq_k keys) into (start, end)
    chunks so a batch holds at most max_rows query tokens and 4*max_rows cached keys; at least one row each."""
    per = max(1, min(max_rows // max(seq_q, 1), (4 * max_rows) // max(seq_k, 1)))
    return [(a, min(a + per, n_rows)) for a in range(0, n_rows, per)]


def _make_hook(idx: Tensor, vals: Tensor, heads: Tensor | None, every: bool):
    def hook(_module, _inp, out):
        return write_patch(out, idx, vals, heads, every)
    return hook


def _tl_block(model, bc: BucketCache, layer: int, h: Tensor, ex_act: Tensor, p: int, patches) -> Tensor:
    """TransformerLens' own block with a KV-cache entry and per-call hooks (any architecture)."""
    entry = None
    if p > 0:
        kv = bc.kv[layer]
        rows = ex_act + bc.base_row0
        entry = TransformerLensKeyValueCacheEntry(kv.past_keys[rows, :p], kv.past_values[rows, :p],
                                                  frozen=True)
    handles = [_hook_module(model, code, layer).register_forward_hook(_make_hook(idx, vals, heads, every))
               for code, idx, vals, heads, every in patches if code != 0]
    try:
        return model.blocks[layer](h, past_kv_cache_entry=entry)
    finally:
        for hd in handles:
            hd.remove()


def _patch_values(model, bc: BucketCache, rows: Rows, r: Tensor, ex_all: Tensor, code: int, layer: int, p: int,
                  every: bool, site_names) -> tuple[tuple, int]:
    """The values rows r [k] (indices into `rows`) write at `layer`: ((site code written, values, heads or None,
    every), FLOPs). Values are the source run's activation at token p ([k, ...]) or at p..T-1 ([k, S, ...]);
    an mlp_post patch (one neuron or all) is written as mlp_out, read out from the base run's hidden
    activations with the patched ones replaced."""
    dev = ex_all.device
    pos = slice(p, None) if every else p
    src = bc.src(site_names[(code, layer)])
    e = ex_all[r]
    if code == 3:
        heads = rows.head.to(dev)[r]
        return (3, src[e, pos, heads], heads, every), 0
    if code != 4:
        return (code, src[e, pos], None, every), 0
    post = bc.base(site_names[(code, layer)])[e, pos].clone()
    neuron = rows.neuron.to(dev)[r]
    one = (neuron >= 0).nonzero().flatten()
    all_ = (neuron < 0).nonzero().flatten()
    post[all_] = src[e[all_], pos]
    post[one, ..., neuron[one]] = src[e[one], pos][torch.arange(len(one), device=dev), ..., neuron[one]]
    d_mlp, d = post.shape[-1], model.cfg.d_model
    return (2, mlp_readout(model, layer, post), None, every), 2 * post[..., 0].numel() * d_mlp * d


@torch.inference_mode()
def run_rows(model, bc: BucketCache, rows: Rows, p: int, resid_names: dict[int, str],
             site_names: dict[tuple[int, int], str], fast: dict | None) -> tuple[Tensor, Tensor, int, int]:
    """Run one staircase batch of rows (sorted by layer) that all patch token p.

    resid_names: layer -> hook of the residual entering it; site_names: (site code, layer) -> hook of the
    patched activation. fast: per-layer LayerWeights for the lean block, or None for TransformerLens' blocks.
    A row with every == 1 patches positions p..T-1 (all it recomputes), else position p only.
    Returns (final residual at the last position [R, d_model], ids [R]: the index in `rows` of each output
    row, token-layers run, FLOPs). Output rows come grouped by example (not in `rows` order) so the lean
    block can share each example's past keys.
    """
    cfg, L, T, dev = model.cfg, model.cfg.n_layers, bc.T, model.cfg.device
    ex_all = rows.ex.to(dev)
    counts = torch.bincount(rows.layer, minlength=L).tolist()
    h, ids = None, torch.empty(0, dtype=torch.long, device=dev)
    n_active = token_layers = flops = 0
    for layer in range(int(rows.layer[0]), L):
        k = counts[layer]
        patches = []
        if k:
            a, b = n_active, n_active + k
            e_new = ex_all[a:b]
            h_new = bc.base(resid_names[layer])[e_new, p:].clone()
            for every in (0, 1):
                is_resid = ((rows.site[a:b] == 0) & (rows.every[a:b] == every)).nonzero().flatten().to(dev)
                if len(is_resid):
                    src = bc.src(resid_names[layer])[e_new[is_resid], p:]
                    write_patch(h_new, is_resid, src if every else src[:, 0], None, bool(every))
            h = h_new if h is None else torch.cat([h, h_new])
            ids = torch.cat([ids, torch.arange(a, b, device=dev)])
            perm = torch.argsort(ex_all[ids], stable=True)
            h, ids = h[perm], ids[perm]
            n_active = b
            where = (ids >= a).nonzero().flatten()  # positions in h of the rows joining here
            r_sites, r_every = rows.site.to(dev)[ids[where]], rows.every.to(dev)[ids[where]]
            for code in (1, 2, 3, 4):
                for every in (0, 1):
                    sel = where[(r_sites == code) & (r_every == every)]
                    if not len(sel):
                        continue
                    patch, fl = _patch_values(model, bc, rows, ids[sel], ex_all, code, layer, p, bool(every),
                                              site_names)
                    patches.append((patch[0], sel, *patch[1:]))
                    flops += fl
        ex_act = ex_all[ids]
        if fast is None:
            h = _tl_block(model, bc, layer, h, ex_act, p, patches)
        else:
            if k:
                segs = segments(ex_act)
            past = bc.past(model, layer) if p > 0 else None
            h = fast_block(model, fast[layer], layer, h, segs, p, past, patches, last_only=layer == L - 1)
        token_layers += n_active * (T - p)
        flops += n_active * rows_block_flops(cfg, T - p, T, fast is not None and layer == L - 1)
    return h[:, -1], ids, token_layers, flops
