"""Many node circuits in one batched forward: the fast path of node faithfulness curves.

A circuit keeps some nodes on the clean input x and takes every other node from the counterfactual
x' at every position (docs/architecture.md §6). Node activations at tokens before the first token where x and x'
differ are the same in both runs (causal attention), so a circuit's run equals the clean run there:
a row of work is (circuit, example), it starts from the cached clean residual at the first layer the
circuit patches, recomputes only tokens p..T-1 (attending to the clean run's cached keys/values for
the rest), writes the dropped nodes' x' values into its own activations on the way, and reads the
metric at the last token through only the unembedding columns the metric needs. Rows of every circuit
share each batched block, through the patching engine's lean block (core.block.fast_block).

Nodes this runs: head outputs (z, one head), attention outputs and MLP outputs (attn_out, mlp_out,
or mlp_post as a whole, which is the same patch), every position. Others (q/k/v inputs, single
neurons, positions) and models the lean block does not cover go through the hooked loop
(`circuits_run_here` says which).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .block import fast_block, fast_path_ok, layer_weights, segments
from .metrics import Metric
from .patch_engine import ActivationCache, length_buckets
from .progress import check_cancelled
from .sites import Site
from .staircase import CACHED_RUN_TOKENS, SITE_CODES, act_name, cached_run, chunk_bounds, default_max_rows

# the node kinds a circuit row can patch, and the site each is written at (a whole MLP's hidden
# activations produce exactly its output)
_WRITTEN_AS = {"z": "z", "attn_out": "attn_out", "mlp_out": "mlp_out", "mlp_post": "mlp_out"}


def circuits_run_here(model, nodes: Sequence[Site]) -> bool:
    """Whether `circuit_metrics` runs these nodes on this model: every node is a head output, an attention output
    or a whole MLP (output or hidden activations) at every position, and the lean block computes this model."""
    return bool(nodes) and fast_path_ok(model) and all(
        n.kind in _WRITTEN_AS and n.position is None and n.neuron is None
        and (n.kind == "z") == (n.head is not None) for n in nodes)


@torch.inference_mode()
def circuit_metrics(model, nodes: Sequence[Site], keep: Tensor, clean: Sequence[Tensor], corrupt: Sequence[Tensor],
                    metric: Metric, max_rows: int | None = None,
                    should_cancel: Callable[[], bool] | None = None,
                    act_cache: ActivationCache | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The metric of x with the nodes outside each circuit taken from x'.

    nodes: Sites `circuits_run_here` accepts; keep [K, n_nodes] bool (True: circuit k keeps the node on x);
    clean, corrupt: n token sequences [T_i] (pairs share a length). max_rows bounds the query tokens (rows x
    recomputed tokens) of one batched forward (default: `default_max_rows`). Returns (metric [K, n], m(x) [n],
    m(x') [n]) per example; equal to the hooked loop's (`attribution.faithfulness`) to float noise. act_cache: reuse
    the clean and counterfactual runs of an earlier sweep on the same pairs (exact patching's, in either direction).
    """
    if not circuits_run_here(model, nodes):
        raise ValueError("circuit_metrics runs head, attention-output and whole-MLP nodes on models the lean "
                         "block covers; use the hooked loop")
    keep = torch.as_tensor(keep, dtype=torch.bool).cpu()
    K, n, L, dev = keep.shape[0], len(clean), model.cfg.n_layers, model.cfg.device
    sites = [Site(_WRITTEN_AS[nd.kind], nd.layer, head=nd.head) for nd in nodes]
    codes = torch.tensor([SITE_CODES[s.kind] for s in sites])
    layer_of = torch.tensor([s.layer for s in sites])
    head_of = torch.tensor([-1 if s.head is None else s.head for s in sites])
    drop = ~keep
    # a circuit starts at the first layer where it drops a node (before that its run is the clean run)
    start = torch.where(drop.any(1), torch.where(drop, layer_of, L).min(1).values, L)
    final_name = act_name(model, Site("resid_pre", L))
    resid_names = {l: act_name(model, Site("resid_pre", l)) for l in sorted(set(start.tolist()) - {L})}
    site_names = {(int(c), int(l)): act_name(model, s) for c, l, s in zip(codes, layer_of, sites)}
    names = {final_name, *resid_names.values(), *site_names.values()}
    fast = {l: layer_weights(model, l) for l in range(min(resid_names, default=L), L)}
    max_rows = max_rows or default_max_rows(dev)
    # rows are (circuit, example): circuits in start-layer order (a chunk starts at its first row's layer), each
    # circuit's examples together; circuits that drop nothing are the clean run
    ks = torch.argsort(start, stable=True)
    ks = ks[start[ks] < L]
    out, m_x, m_c = torch.empty(K, n), torch.empty(n), torch.empty(n)
    for T, idx in length_buckets(clean, CACHED_RUN_TOKENS):  # as exact patching buckets: their cached runs match
        check_cancelled(should_cancel, "faithfulness curve")
        ex = torch.tensor(idx)
        x = torch.stack([torch.as_tensor(clean[i]) for i in idx])
        xc = torch.stack([torch.as_tensor(corrupt[i]) for i in idx])
        bc = act_cache.get(model, x, xc, names)[0] if act_cache is not None else cached_run(model, x, xc, names)
        mb = metric.from_final_resid(model, bc.base(final_name)[:, -1], ex.to(dev)).cpu()
        m_x[ex], m_c[ex] = mb, metric.from_final_resid(model, bc.src(final_name)[:, -1], ex.to(dev)).cpu()
        out[:, ex] = mb  # circuits that drop nothing (or pairs that never differ) are the clean run
        differs = x != xc
        first = torch.where(differs.any(1), differs.int().argmax(1), T)
        for p in sorted(set(first.tolist()) - {T}):
            ex_p = (first == p).nonzero().flatten()
            rk, re = ks.repeat_interleave(len(ex_p)), ex_p.repeat(len(ks))
            for a, b in chunk_bounds(len(rk), T - p, T, max_rows):
                check_cancelled(should_cancel, "faithfulness curve")
                resid = _run_chunk(model, bc, fast, rk[a:b], re[a:b], drop, codes, layer_of, head_of,
                                   int(start[rk[a]]), p, resid_names, site_names)
                out[rk[a:b], ex[re[a:b]]] = metric.from_final_resid(model, resid, ex[re[a:b]].to(dev)).cpu()
    return out, m_x, m_c


def _run_chunk(model, bc, fast, rk: Tensor, re: Tensor, drop: Tensor, codes: Tensor, layer_of: Tensor,
               head_of: Tensor, l0: int, p: int, resid_names: dict, site_names: dict) -> Tensor:
    """Rows (circuit rk[i], local example re[i]) from layer l0 at tokens p..T-1 -> final residual at the last token
    [R, d_model] in the given row order. Rows starting after l0 carry the clean run until their first drop."""
    dev, L = model.cfg.device, model.cfg.n_layers
    order = torch.argsort(re, stable=True)  # the lean block shares each example's past keys across its rows
    rk, re = rk[order], re[order]
    re_d = re.to(dev)
    h = bc.base(resid_names[l0])[re_d, p:].clone()
    segs = segments(re)
    for layer in range(l0, L):
        patches = []
        at = (layer_of == layer).nonzero().flatten()
        for code in codes[at].unique().tolist():
            cols = at[codes[at] == code]
            name = site_names[(code, layer)]
            src = bc.src(name)
            hit = drop[rk][:, cols]  # [R, n_cols]: row i drops node cols[j]
            r, j = hit.nonzero(as_tuple=True)
            if not len(r):
                continue
            r_d = r.to(dev)
            if code == SITE_CODES["z"]:
                heads = head_of[cols][j].to(dev)
                patches.append((code, r_d, src[re_d[r_d], p:, heads], heads, True))
            else:  # a whole output: one node per (code, layer)
                patches.append((code, r_d, src[re_d[r_d], p:], None, True))
        past = bc.past(model, layer) if p > 0 else None
        h = fast_block(model, fast[layer], layer, h, segs, p, past, patches, last_only=layer == L - 1)
    resid = torch.empty_like(h[:, -1])
    resid[order.to(dev)] = h[:, -1]
    return resid
