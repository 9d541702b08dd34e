"""Exact activation patching: a fast engine and the naive reference loop.

Example i has clean tokens clean[i] and counterfactual tokens corrupt[i] of the same length T_i
(lengths may differ across examples; both paths bucket by length). positions [n, P]: positions[i, c]
is the token index in example i of position column c (negative counts from the end). A cell is a core
`Site` of kind resid_pre, attn_out, mlp_out, z (with its `head`) or mlp_post (all hidden units, or one
`neuron`) whose `position` is a column index c: it patches that activation at token positions[i, c] of
every example i; or None: it patches the activation at every position (what exact attribution of a
head, MLP or neuron does). Denoising runs the corrupt input and writes the clean activation in; noising
the reverse. The metric is read at each example's final token; raw values only (callers normalise).

`patch_sweep` returns what `naive_patch_sweep` (one hooked forward per cell) returns, to float
noise, while running only what a patch can change: see staircase.py for how. Recomputed rows go
through core.block.fast_block (no TL hook points: hooks left on the model would act on the
cached runs but not there) or, with block="tl" or an unsupported architecture, TL's own blocks.
Special cell: kind "resid_pre" with layer == n_layers is the final residual stream
(blocks.{L-1}.hook_resid_post).
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from .block import fast_path_ok, layer_weights
from .metrics import Metric
from .progress import Progress, check_cancelled
from .sites import Site
from .staircase import (
    CACHED_RUN_TOKENS,
    SITE_CODES,
    BucketCache,
    Rows,
    act_name,
    cached_run,
    chunk_bounds,
    default_max_rows,
    forward_flops,
    run_rows,
)

Direction = Literal["denoise", "noise"]

__all__ = ["ActivationCache", "Direction", "PatchResult", "length_buckets", "naive_patch_sweep", "patch_sweep"]


class ActivationCache:
    """Cached base+source runs reused across sweeps on the same inputs (successive locate calls on one
    model, task, n and seed pay for the clean and counterfactual forwards once).

    Entries are keyed by the model object and the exact token tensors; a request for activations an entry
    lacks recomputes it with the union of names, so the entry only grows. LRU-bounded in entries and in bytes
    (the newest entry is always kept).
    """

    def __init__(self, max_entries: int = 8, max_bytes: int = 2 << 30):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[tuple, tuple[weakref.ref, set[str], object]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def _key(model, base_t: Tensor, src_t: Tensor) -> tuple:
        h = hashlib.sha256(base_t.cpu().numpy().tobytes() + b"|" + src_t.cpu().numpy().tobytes()).hexdigest()
        return id(model), tuple(base_t.shape), h

    def nbytes(self) -> int:
        """Memory the cached activations and keys/values hold."""
        with self._lock:
            return self._nbytes()

    def _nbytes(self) -> int:
        return sum(e[2].nbytes() for e in self._entries.values())

    def get(self, model, base_t: Tensor, src_t: Tensor, names: set[str]) -> tuple[BucketCache, bool]:
        """The cached run of base_t [nb, T] and src_t [nb, T] holding at least the hooks in `names`, and
        whether it was a hit (False: it was just computed, with the union of the old and new names). The runs
        of the opposite sweep (base and source exchanged: noising after denoising) are a hit too."""
        key = self._key(model, base_t, src_t)
        with self._lock:
            for k, swap in ((key, False), (self._key(model, src_t, base_t), True)):
                entry = self._entries.get(k)
                if entry is not None and entry[0]() is model and names <= entry[1]:
                    self._entries.move_to_end(k)
                    self.hits += 1
                    return (entry[2].swapped() if swap else entry[2]), True
            entry = self._entries.get(key)
            have = entry[1] if entry is not None and entry[0]() is model else set()
        self.misses += 1
        union = names | have
        bc = cached_run(model, base_t, src_t, union)
        with self._lock:
            self._entries[key] = (weakref.ref(model), union, bc)
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and (len(self._entries) > self.max_entries or self._nbytes() > self.max_bytes):
                self._entries.popitem(last=False)
        return bc, False


@dataclass
class PatchResult:
    """Raw metric values of a sweep (CPU float32) and what it cost; column j of `patched` is cells[j]."""

    clean: Tensor            # [n] metric on clean inputs
    corrupt: Tensor          # [n] metric on counterfactual inputs
    patched: Tensor          # [n, n_cells] metric after patching each cell
    cells: list[Site]
    direction: str
    seconds: float = 0.0
    n_pairs: int = 0         # examples x cells
    n_skipped: int = 0       # pairs answered from cached runs without computing anything
    n_forward_rows: int = 0  # pairs actually recomputed (one row each)
    token_layers: int = 0    # token positions x blocks really run, cached runs included
    naive_token_layers: int = 0
    flops: float = 0.0       # matmul FLOPs really run (blocks, attention, unembedding columns)
    naive_flops: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def gflops_per_s(self) -> float:
        """Achieved matmul throughput of the sweep (flops / seconds), in GFLOP/s."""
        return self.flops / self.seconds / 1e9 if self.seconds > 0 else float("nan")

    def normalised(self) -> Tensor:
        """(m_patched - m_base) / (m_source - m_base) per example: [n, n_cells]; 1 = fully restored."""
        base, src = (self.corrupt, self.clean) if self.direction == "denoise" else (self.clean, self.corrupt)
        return (self.patched - base[:, None]) / (src - base)[:, None]

    def cost(self) -> dict:
        """Time and work: pairs, skipped pairs, rows run, token-layers and GFLOPs next to the naive loop's."""
        return {"seconds": self.seconds, "pairs": self.n_pairs, "skipped": self.n_skipped,
                "rows_run": self.n_forward_rows, "token_layers": self.token_layers,
                "naive_token_layers": self.naive_token_layers, "gflop": self.flops / 1e9,
                "naive_gflop": self.naive_flops / 1e9, "gflop_per_s": self.gflops_per_s}


# ---------------------------------------------------------------- validation

def _validate(model, clean, corrupt, positions, cells, direction):
    cfg = model.cfg
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', not {direction!r}")
    clean = [torch.as_tensor(t, dtype=torch.long).flatten() for t in clean]
    corrupt = [torch.as_tensor(t, dtype=torch.long).flatten() for t in corrupt]
    n = len(clean)
    if n == 0 or len(corrupt) != n:
        raise ValueError(f"need the same non-zero number of clean and corrupt inputs ({n} vs {len(corrupt)})")
    for i, (c, x) in enumerate(zip(clean, corrupt)):
        if len(c) != len(x) or len(c) == 0:
            raise ValueError(f"example {i}: clean and corrupt lengths differ or are empty ({len(c)} vs {len(x)})")
    positions = torch.as_tensor(positions, dtype=torch.long)
    if positions.ndim != 2 or positions.shape[0] != n:
        raise ValueError(f"positions must be [n={n}, P], got {tuple(positions.shape)}")
    lens = torch.tensor([len(c) for c in clean])
    positions = torch.where(positions < 0, positions + lens[:, None], positions)
    if (positions < 0).any() or (positions >= lens[:, None]).any():
        raise ValueError("a position index is outside its example")
    for c in cells:
        if not isinstance(c, Site):
            raise ValueError(f"cells must be core Sites, not {type(c).__name__}")
        if c.kind not in SITE_CODES:
            raise ValueError(f"unknown site {c.kind!r}; expected one of {list(SITE_CODES)}")
        top = cfg.n_layers if c.kind == "resid_pre" else cfg.n_layers - 1
        if not 0 <= c.layer <= top:
            raise ValueError(f"{c.label}: layer out of range 0..{top}")
        if c.position is not None:  # None: every position
            if not hasattr(c.position, "__index__") or isinstance(c.position, bool):
                raise ValueError(f"{c.label}: position must be a position column index or None, not {c.position!r}")
            if not 0 <= c.position < positions.shape[1]:
                raise ValueError(f"{c.label}: position column out of range 0..{positions.shape[1] - 1}")
        if (c.kind == "z") != (c.head is not None):
            raise ValueError(f"{c.label}: a head is required for site 'z' and only there")
        if c.kind == "z" and not 0 <= c.head < cfg.n_heads:
            raise ValueError(f"{c.label}: head out of range 0..{cfg.n_heads - 1}")
        if c.kind in ("mlp_out", "mlp_post") and cfg.attn_only:
            raise ValueError(f"{c.label}: the model is attention-only")
        if c.kind == "mlp_post" and not hasattr(model.blocks[c.layer].mlp, "W_out"):
            raise ValueError(f"{c.label}: this MLP has no single W_out read-out (mixture of experts)")
        if c.neuron is not None and not 0 <= c.neuron < cfg.d_mlp:
            raise ValueError(f"{c.label}: neuron out of range 0..{cfg.d_mlp - 1}")
    return clean, corrupt, positions


def length_buckets(clean: Sequence[Tensor], max_tokens: int | None = None) -> list[tuple[int, list[int]]]:
    """(length, example indices) groups; with max_tokens, no group holds more tokens than that."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(clean):
        groups[len(t)].append(i)
    out = []
    for T, idx in sorted(groups.items()):
        step = len(idx) if max_tokens is None else max(1, max_tokens // T)
        out += [(T, idx[a:a + step]) for a in range(0, len(idx), step)]
    return out


def _base_src(direction, clean_t, corrupt_t):
    return (corrupt_t, clean_t) if direction == "denoise" else (clean_t, corrupt_t)


def _naive_costs(model, metric, clean, n_cells) -> tuple[int, int]:
    cfg = model.cfg
    tl = fl = 0
    for T, idx in length_buckets(clean):
        tl += n_cells * len(idx) * T * cfg.n_layers
        fl += n_cells * forward_flops(cfg, len(idx), T, cfg.d_vocab_out)
    return tl, fl


# ---------------------------------------------------------------- the naive reference

@torch.inference_mode()
def naive_patch_sweep(model, clean, corrupt, positions, cells: list[Site], metric: Metric,
                      direction: Direction = "denoise", max_rows: int = 16384,
                      progress: Progress | None = None,
                      should_cancel: Callable[[], bool] | None = None) -> PatchResult:
    """One full forward with a TransformerLens hook per cell (per length bucket): the reference.

    Same arguments and result as `patch_sweep` (clean, corrupt: n token sequences [T_i]; positions [n, P];
    cells: Sites whose `position` is a column of positions), computed the obvious way: for each cell, the
    whole base batch [nb, T] runs again with the source activation written in at [rows, positions[:, c]].
    max_rows bounds the examples of one length bucket run together.
    """
    t0 = time.perf_counter()
    clean, corrupt, positions = _validate(model, clean, corrupt, positions, cells, direction)
    n, dev = len(clean), model.cfg.device
    out_clean, out_corrupt = torch.empty(n), torch.empty(n)
    patched = torch.empty(n, len(cells))
    done = 0
    for T, idx in length_buckets(clean, max_rows):
        ex = torch.tensor(idx)
        ct = torch.stack([clean[i] for i in idx]).to(dev)
        xt = torch.stack([corrupt[i] for i in idx]).to(dev)
        mask = torch.ones_like(ct)
        base_t, src_t = _base_src(direction, ct, xt)
        names = {act_name(model, c) for c in cells}
        src_logits, src_cache = model.run_with_cache(src_t, names_filter=lambda nm: nm in names,
                                                     attention_mask=mask)
        base_logits = model(base_t, attention_mask=mask)
        m_src = metric.from_logits(model, src_logits[:, -1], ex).cpu()
        m_base = metric.from_logits(model, base_logits[:, -1], ex).cpu()
        out_clean[ex], out_corrupt[ex] = (m_src, m_base) if direction == "denoise" else (m_base, m_src)
        rows = torch.arange(len(idx), device=dev)
        for j, c in enumerate(cells):
            check_cancelled(should_cancel, "patching sweep")
            name = act_name(model, c)
            # every position: a slice; one column: the token of that column in each row
            pos = slice(None) if c.position is None else positions[ex, c.position].to(dev)
            r = slice(None) if c.position is None else rows
            src = src_cache[name]
            unit = c.head if c.head is not None else c.neuron  # the last-but-one or last axis, or all

            def hook(act, hook, src=src, pos=pos, r=r, unit=unit, head=c.head is not None):
                if unit is None:
                    act[r, pos] = src[r, pos]
                elif head:
                    act[r, pos, unit] = src[r, pos, unit]
                else:
                    act[r, pos, ..., unit] = src[r, pos, ..., unit]
                return act

            logits = model.run_with_hooks(base_t, fwd_hooks=[(name, hook)], attention_mask=mask)
            patched[ex, j] = metric.from_logits(model, logits[:, -1], ex).cpu()
            done += len(idx)
            if progress:
                progress(done / (n * len(cells)), f"naive patching: cell {j + 1}/{len(cells)}")
    res = PatchResult(out_clean, out_corrupt, patched, list(cells), direction,
                      n_pairs=n * len(cells), n_forward_rows=n * len(cells))
    res.token_layers, res.flops = _naive_costs(model, metric, clean, len(cells))
    res.naive_token_layers, res.naive_flops = res.token_layers, res.flops
    res.seconds = time.perf_counter() - t0
    return res


# ---------------------------------------------------------------- the engine

def _plan_bucket(model, bc, ex_local_pos, cells, first_diff, m_base, m_src, patched_b):
    """Answer every pair that needs no computation; return the rest as Rows grouped by token p.

    ex_local_pos [nb, P] token indices; first_diff [nb]; m_base, m_src [nb]; patched_b [nb, n_cells] is
    filled in place for the answered pairs. Returns ({p: Rows}, number of pairs answered).

    A pair needs nothing when the patched activation equals the base one: the position precedes
    the first differing token (causal attention), or the cached activations are bitwise equal. A cell
    patched at every position starts at the first token, from the first differing one on, where its
    activation differs (before it the patch changes nothing), and needs nothing if there is none.
    """
    L, T, nb = model.cfg.n_layers, bc.T, bc.nb
    same_cache: dict[tuple, Tensor] = {}
    todo: list[Tensor] = []  # [k, 8] rows of (p, example, cell, layer, site, head, neuron, every)
    skipped = 0
    ar = torch.arange(nb)
    tokens = torch.arange(T)
    for j, c in enumerate(cells):
        every = c.position is None
        if c.kind == "resid_pre" and c.layer == L:
            # The final residual only reaches the metric through the last position.
            p = torch.full((nb,), T - 1) if every else ex_local_pos[:, c.position]
            patched_b[:, j] = torch.where(p == T - 1, m_src, m_base)
            skipped += nb
            continue
        same = _same(model, bc, c, same_cache)  # [nb, T]: the cell's slice equal in both runs
        if every:
            differs = ~same & (tokens[None] >= first_diff[:, None])
            trivial = ~differs.any(1)
            p = torch.where(trivial, T, differs.int().argmax(1))
        else:
            p = ex_local_pos[:, c.position]  # [nb]
            trivial = same[ar, p] | (p < first_diff)
        patched_b[trivial, j] = m_base[trivial]
        skipped += int(trivial.sum())
        e = (~trivial).nonzero().flatten()
        if len(e):
            const = torch.tensor([j, c.layer, SITE_CODES[c.kind], -1 if c.head is None else c.head,
                                  -1 if c.neuron is None else c.neuron, int(every)])
            todo.append(torch.cat([p[e, None], e[:, None], const.expand(len(e), 6)], dim=1))
    plans = {}
    if todo:
        t = torch.cat(todo)
        for p in t[:, 0].unique().tolist():
            g = t[t[:, 0] == p]
            plans[p] = Rows(*g[:, 1:].T).sorted()
    return plans, skipped


def _same(model, bc, c: Site, memo: dict) -> Tensor:
    """[nb, T] bool: cell c's slice of its activation (one head, one neuron, or all of it) is bitwise equal in
    the base and source runs, per example and token. memo shares the comparison between cells of one hook."""
    name = act_name(model, c)
    if name not in memo:
        a, s = bc.base(name), bc.src(name)
        eq = a == s
        if c.kind == "z":
            eq = eq.all(-1)  # [nb, T, heads]
        elif c.kind != "mlp_post":  # mlp_post keeps its neurons: [nb, T, d_mlp]
            eq = eq.flatten(2).all(-1)
        memo[name] = eq.cpu()
    eq = memo[name]
    if c.kind == "z":
        return eq[:, :, c.head]
    if c.kind == "mlp_post":
        return eq.all(-1) if c.neuron is None else eq[:, :, c.neuron]
    return eq


@torch.inference_mode()
def patch_sweep(model, clean, corrupt, positions, cells: list[Site], metric: Metric,
                direction: Direction = "denoise", max_rows: int | None = None,
                progress: Progress | None = None,
                should_cancel: Callable[[], bool] | None = None,
                block: Literal["auto", "lean", "tl"] = "auto",
                act_cache: ActivationCache | None = None) -> PatchResult:
    """Exact patching of every cell, computing only what each patch can change.

    clean, corrupt: n token sequences (1-D, [T_i]; clean[i] and corrupt[i] of one length).
    positions: [n, P] token index of each position column per example (negative: from the end).
    cells: Sites of kind resid_pre (layer 0..n_layers; n_layers = the final residual), attn_out, mlp_out,
    z (with `head`) or mlp_post (all hidden units or one `neuron`), each with `position` = a column 0..P-1
    of `positions`, or None to patch every position (a row then runs from the first token where the
    cell's activation differs).
    metric: read at the final token from the final residual stream (only its unembedding columns).
    Returns a PatchResult: clean, corrupt [n] and patched [n, len(cells)] metric values, equal to
    `naive_patch_sweep`'s to float noise.
    max_rows bounds the query tokens (rows x recomputed positions) in one batched forward, and
    4*max_rows the cached keys it reads (default: `default_max_rows` of the model's device); lower it to
    save memory.
    block: "lean" runs recomputed rows through core.block.fast_block, "tl" through
    TransformerLens' own blocks (any architecture); "auto" picks lean where it applies.
    act_cache: reuse the cached clean/counterfactual runs of earlier sweeps on the same inputs.
    """
    t0 = time.perf_counter()
    clean, corrupt, positions = _validate(model, clean, corrupt, positions, cells, direction)
    cfg = model.cfg
    if cfg.positional_embedding_type == "shortformer":
        # positions enter every layer's queries and keys, not the residual stream: the suffix forward here does not
        # model that, so such a model gets the reference sweep (same cells, same numbers, one forward per cell)
        res = naive_patch_sweep(model, clean, corrupt, positions, cells, metric, direction,
                                progress=progress, should_cancel=should_cancel)
        res.extra["engine"] = ("hooked sweep (one forward per cell): the fast engine does not model shortformer "
                               "positional embeddings")
        return res
    n, L, dev = len(clean), cfg.n_layers, cfg.device
    if block == "lean" and not fast_path_ok(model):
        raise ValueError("this model's configuration needs block='tl'")
    use_lean = block == "lean" or (block == "auto" and fast_path_ok(model))
    out_clean, out_corrupt = torch.empty(n), torch.empty(n)
    patched = torch.empty(n, len(cells))
    res = PatchResult(out_clean, out_corrupt, patched, list(cells), direction, n_pairs=n * len(cells))
    res.naive_token_layers, res.naive_flops = _naive_costs(model, metric, clean, len(cells))
    n_cols = metric.n_unembed_columns(model)
    # the cached base+source run of a bucket holds 2 x its tokens: keep that within max_rows (16k unless set)
    buckets = length_buckets(clean, max(1, (max_rows or 2 * CACHED_RUN_TOKENS) // 2))
    max_rows = max_rows or default_max_rows(dev)
    final_name = act_name(model, Site("resid_pre", L))
    layers = sorted({c.layer for c in cells if c.layer < L})
    resid_names = {l: act_name(model, Site("resid_pre", l)) for l in layers}
    site_names = {(SITE_CODES[c.kind], c.layer): act_name(model, c)
                  for c in cells if not (c.kind == "resid_pre" and c.layer == L)}
    names = {final_name, *resid_names.values(), *site_names.values()}
    fast = {l: layer_weights(model, l) for l in range(layers[0], L)} if use_lean and layers else None
    res.extra["block"] = "lean" if use_lean else "tl"
    done_ex = 0
    for T, idx in buckets:
        check_cancelled(should_cancel, "patching sweep")
        ex = torch.tensor(idx)
        ct = torch.stack([clean[i] for i in idx])
        xt = torch.stack([corrupt[i] for i in idx])
        base_t, src_t = _base_src(direction, ct, xt)
        if act_cache is not None:
            bc, hit = act_cache.get(model, base_t, src_t, names)
        else:
            bc, hit = cached_run(model, base_t, src_t, names), False
        nb = len(idx)
        res.extra["cache_hits"] = res.extra.get("cache_hits", 0) + hit
        if not hit:  # a reused run cost nothing this time
            res.token_layers += 2 * nb * T * L
            res.flops += forward_flops(cfg, 2 * nb, T, 0)
        res.flops += 2 * nb * 2 * cfg.d_model * n_cols
        m_base = metric.from_final_resid(model, bc.base(final_name)[:, -1], ex.to(dev)).cpu()
        m_src = metric.from_final_resid(model, bc.src(final_name)[:, -1], ex.to(dev)).cpu()
        out_clean[ex], out_corrupt[ex] = (m_src, m_base) if direction == "denoise" else (m_base, m_src)
        differs = base_t != src_t
        first_diff = torch.where(differs.any(1), differs.int().argmax(1), torch.full((nb,), T))
        patched_b = torch.empty(nb, len(cells))
        plans, skipped = _plan_bucket(model, bc, positions[ex], cells, first_diff, m_base, m_src, patched_b)
        res.n_skipped += skipped
        total = sum(int(((L - r.layer) * (T - p)).sum()) for p, r in plans.items()) or 1
        work = 0.0
        for p, rows in sorted(plans.items()):
            for a, b in chunk_bounds(len(rows), T - p, T, max_rows):
                check_cancelled(should_cancel, "patching sweep")
                chunk = rows.slice(a, b)
                resid, ids, tl, fl = run_rows(model, bc, chunk, p, resid_names, site_names, fast)
                ids = ids.cpu()
                vals = metric.from_final_resid(model, resid, ex.to(dev)[chunk.ex[ids].to(dev)]).cpu()
                patched_b[chunk.ex[ids], chunk.cell[ids]] = vals
                res.n_forward_rows += len(chunk)
                res.token_layers += tl
                res.flops += fl + len(chunk) * 2 * cfg.d_model * n_cols
                work += tl
                if progress:
                    frac = (done_ex + nb * min(work / total, 1.0)) / n
                    progress(frac, f"patching: length {T}, token {p}, {res.n_forward_rows} rows run")
        patched[ex] = patched_b
        done_ex += nb
        del bc
    res.seconds = time.perf_counter() - t0
    if progress:
        progress(1.0, f"patching done: {res.n_forward_rows} rows run, {res.n_skipped} skipped")
    return res
