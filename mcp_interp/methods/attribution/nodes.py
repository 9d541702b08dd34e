"""Node attribution: exact patching and the cheap estimates of it (docs/architecture.md §6).

Every method estimates, per example, the effect of denoising one node: m(x' with the node taken
from x) - m(x'), in metric units; callers normalise by m(x) - m(x'). Methods:

  exact        patch each node on x' with its value on x and rerun: the ground truth. Run by the patching
               engine (core.patch_engine) as cells patched at every position: each (example, node) starts
               from the cached x' run at the node's layer and first differing token, nodes whose activation
               does not differ cost nothing, and many share one batched forward. Query/key/value input
               nodes (and models the engine does not run) take one hooked forward per node instead.
  atp          attribution patching: (a(x) - a(x')) . dm/da at x'. 2 forwards + 1 backward.
  atp_star     AtP* (Kramar et al. 2024, atp_star.py): AtP with the QK fix (every later attention pattern
               the node's residual write reaches is recomputed exactly, only what follows the pattern is
               linearised) and GradDrop (the estimate with the gradient through each layer's inputs dropped;
               the term of largest magnitude is kept), on the metric's scale like exact patching.
  grad         gradient saliency: the norm of dm/da at x (unsigned; no counterfactual).
  grad_act     gradient x activation at x: a(x) . dm/da(x) (no counterfactual).
  ig           integrated gradients from x' to x: (a(x) - a(x')) . mean over alpha of dm/da along the
               straight path between the two inputs' embeddings (midpoint rule, `ig_steps` points).
  act_diff     |a(x) - a(x')|: how much the node changes. Not causal: the correlation-style baseline
               that planted decoys are built to fool.
  dla          direct logit attribution (dla.py): DLA(x) - DLA(x'), the change of what the node writes straight
               into the logit difference through the unembedding (final norm scale frozen from each run). Equals
               exact patching only for nodes that act directly; extra["dla"] holds the DirectAttribution.

Nodes are core `Site`s (components.nodes_for); query/key/value input nodes (level "qkv") run with split
q/k/v inputs. Examples are grouped by length (no padding); each
group is processed in chunks of `batch_size`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.forward import group_by_length, last_position_hook
from ..core.metrics import Metric
from ..core.patch_engine import ActivationCache, patch_sweep
from ..core.progress import Progress, check_cancelled
from ..core.sites import Site
from .atp_star import atp_star_chunk
from .components import QKV, node_hooks, node_mask_hooks, node_values, split_inputs
from .dla import direct_logit_attribution

NODE_METHODS = ("exact", "atp", "atp_star", "grad", "grad_act", "ig", "act_diff", "dla")
SIGNED = {"exact": True, "atp": True, "atp_star": True, "grad": False, "grad_act": True, "ig": True, "act_diff": False,
          "dla": True}


@dataclass
class NodeScores:
    """Node scores of one method over n examples.

    nodes: the scored `Site`s; per_example [n, n_nodes] the estimated denoising effect in metric units;
    m_clean, m_corrupt [n] the metric on x and x'; forwards / backwards count example-forwards (one prompt
    through the model = 1)."""

    method: str
    nodes: list[Site]
    per_example: Tensor
    m_clean: Tensor
    m_corrupt: Tensor
    forwards: int = 0
    backwards: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def normalised(self) -> Tensor:
        """[n_nodes] mean score / mean(m(x) - m(x')): 1.0 = the node alone restores the clean behaviour."""
        return self.per_example.mean(0) / (self.m_clean - self.m_corrupt).mean()


def final_metric(model, logits: Tensor, metric: Metric, idx: Tensor) -> Tensor:
    """The metric of the final position: logits [batch, pos, d_vocab], idx [batch] example indices -> [batch]."""
    return metric.from_logits(model, logits[:, -1], idx)


def _run_cache(model, toks: Tensor, names: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """No-grad forward of toks [batch, pos]: (final-position logits [batch, 1, d_vocab], hook name -> detached
    activation)."""
    cache: dict[str, Tensor] = {}

    def keep(act, hook):
        cache[hook.name] = act.detach()

    with torch.no_grad():
        logits = model.run_with_hooks(toks, fwd_hooks=[(n, keep) for n in names] + [last_position_hook(model)])
    return logits, cache


def _grads(model, toks: Tensor, names: list[str], metric: Metric, idx: Tensor, embed_override=None):
    """Forward with activations at `names` kept as graph nodes; returns (metric [b], acts).

    embed_override(act) replaces hook_embed (the integrated-gradients path)."""
    acts: dict[str, Tensor] = {}

    def keep(act, hook):
        if not act.requires_grad:  # frozen weights: make it a leaf the backward can reach
            act = act.detach().clone().requires_grad_(True)
        acts[hook.name] = act
        return act

    hooks = [(n, keep) for n in names] + [last_position_hook(model)]
    if embed_override is not None:
        hooks.insert(0, ("hook_embed", lambda act, hook: embed_override(act)))
    with torch.enable_grad():
        logits = model.run_with_hooks(toks, fwd_hooks=hooks)
        m = final_metric(model, logits, metric, idx)
    return m, acts


def _chunks(clean: Sequence[Tensor], batch_size: int) -> Iterator[list[int]]:
    """Example indices in batches of equal length, at most batch_size each."""
    for _, idx in sorted(group_by_length([c.tolist() for c in clean]).items()):
        for s in range(0, len(idx), batch_size):
            yield idx[s:s + batch_size]


@dataclass
class PairChunk:
    """One batch of b same-length pairs, run once on each side with the named activations cached.

    idx [b] example indices; x, xc [b, pos] clean and counterfactual tokens (on the model's device);
    cache_x, cache_c: hook name -> detached activation [b, pos, ...]; m_x, m_c [b] the metric, on CPU."""

    idx: Tensor
    x: Tensor
    xc: Tensor
    cache_x: dict[str, Tensor]
    cache_c: dict[str, Tensor]
    m_x: Tensor
    m_c: Tensor


def pair_chunks(model, clean: Sequence[Tensor], corrupt: Sequence[Tensor], metric: Metric, names: list[str],
                batch_size: int, should_cancel=None, names_x: list[str] | None = None) -> Iterator[PairChunk]:
    """One PairChunk per batch of equal-length pairs (cancellation checked between batches).

    clean, corrupt: n token sequences [pos] each; names: hooks to cache on both runs (names_x: on the clean
    run instead, when given)."""
    dev = model.cfg.device
    for chunk in _chunks(clean, batch_size):
        check_cancelled(should_cancel)
        idx = torch.tensor(chunk)
        x = torch.stack([clean[i] for i in chunk]).to(dev)
        xc = torch.stack([corrupt[i] for i in chunk]).to(dev)
        lx, cx = _run_cache(model, x, names if names_x is None else names_x)
        lc, cc = _run_cache(model, xc, names)
        yield PairChunk(idx, x, xc, cx, cc, final_metric(model, lx, metric, idx).detach().cpu(),
                        final_metric(model, lc, metric, idx).detach().cpu())


def node_scores(model, method: str, nodes: list[Site], clean: Sequence[Tensor], corrupt: Sequence[Tensor],
                metric: Metric, positions: Mapping[str, Tensor] | None = None, ig_steps: int = 10,
                batch_size: int = 16, node_chunk: int = 32, progress: Progress | None = None,
                should_cancel=None, use_engine: bool = True, act_cache: ActivationCache | None = None) -> NodeScores:
    """Per-example denoising effect estimates of `method` (one of NODE_METHODS, see the module docstring) for
    every node.

    clean, corrupt: n token sequences [pos] each (x and x' of one pair share a length); metric: per-example
    metric of the final-position logits; positions: position name -> [n] token index of that named
    position in each example (position nodes only); node_chunk: the hooked exact loop's nodes per batched
    forward; use_engine=False makes "exact" take that loop (one hooked forward per node, the reference the
    engine is tested against) even where the engine runs. ValueError for an unknown method."""
    if method not in NODE_METHODS:
        raise ValueError(f"unknown method {method!r}; one of {NODE_METHODS}")
    if method == "exact" and use_engine and engine_runs(model, nodes):
        return exact_node_scores(model, nodes, clean, corrupt, metric, positions, progress, should_cancel, act_cache)
    if method == "dla":
        da = direct_logit_attribution(model, nodes, clean, corrupt, metric, positions, batch_size, progress,
                                      should_cancel)
        return NodeScores("dla", nodes, da.effect, da.m_clean, da.m_corrupt, da.forwards, 0, da.seconds, {"dla": da})
    t0 = time.perf_counter()
    n = len(clean)
    names = node_hooks(nodes)
    out = torch.zeros(n, len(nodes))
    m_x, m_cf = torch.zeros(n), torch.zeros(n)
    extra: dict = {"attention_forwards": 0} if method == "atp_star" else {}
    split = split_inputs(model) if any(n.kind in QKV for n in nodes) else nullcontext()
    with split:
        fw, bw, _ = _node_loop(model, method, nodes, clean, corrupt, metric, positions, ig_steps, batch_size,
                                  node_chunk, progress, should_cancel, names, out, m_x, m_cf, extra)
    return NodeScores(method, nodes, out, m_x, m_cf, fw, bw, time.perf_counter() - t0, extra)


def engine_runs(model, nodes: list[Site]) -> bool:
    """Whether the patching engine computes exact scores of these nodes on this model: every node is a head's
    output, MLP activations (all or one neuron), a whole residual / output site or the residual stream at a named
    position (not a query/key/value input), and the model's positional embedding is not shortformer."""
    return model.cfg.positional_embedding_type != "shortformer" and not any(n.kind in QKV for n in nodes)


def engine_cell(node: Site, columns: list[str]) -> Site:
    """The patching-engine cell that patches `node` at every position (at its named position's column in
    `columns`, for position nodes): the same Site, except that a whole MLP is patched at its output (what its
    hidden activations produce; cheaper, the same numbers) and resid_post at layer l is resid_pre at l + 1."""
    kind, layer = node.kind, node.layer
    if kind == "resid_post":
        kind, layer = "resid_pre", layer + 1
    if kind == "mlp_post" and node.neuron is None:
        kind = "mlp_out"
    pos = columns.index(node.position) if isinstance(node.position, str) else None
    return Site(kind, layer, head=node.head, neuron=node.neuron, position=pos)


def exact_node_scores(model, nodes: list[Site], clean: Sequence[Tensor], corrupt: Sequence[Tensor], metric: Metric,
                      positions: Mapping[str, Tensor] | None = None, progress: Progress | None = None,
                      should_cancel=None, act_cache: ActivationCache | None = None) -> NodeScores:
    """Exact patching of every node (denoising, every position) through the patching engine: `node_scores`'s
    "exact" where `engine_runs`. forwards counts the two cached runs per example plus one (partial) forward per
    (example, node) actually recomputed; extra holds the engine's cost (skipped pairs, token-layers and FLOPs,
    next to a plain forward per node's)."""
    t0 = time.perf_counter()
    n = len(clean)
    columns = sorted({nd.position for nd in nodes if isinstance(nd.position, str)})
    pos = torch.stack([positions[c] for c in columns], 1) if columns else torch.zeros(n, 0, dtype=torch.long)
    cells = [engine_cell(nd, columns) for nd in nodes]
    res = patch_sweep(model, clean, corrupt, pos, cells, metric, progress=progress, should_cancel=should_cancel,
                      act_cache=act_cache)
    extra = {"engine": res.cost(), "block": res.extra.get("block")}
    return NodeScores("exact", nodes, res.patched - res.corrupt[:, None], res.clean, res.corrupt,
                      2 * n + res.n_forward_rows, 0, time.perf_counter() - t0, extra)


def _node_loop(model, method, nodes, clean, corrupt, metric, positions, ig_steps, batch_size, node_chunk, progress,
               should_cancel, names, out, m_x, m_cf, extra) -> tuple[int, int, int]:
    """node_scores' loop over batches of pairs: fills out [n, n_nodes], m_x, m_cf [n]; returns (forwards,
    backwards, examples done)."""
    n = len(clean)
    fw = bw = done = 0
    for pc in pair_chunks(model, clean, corrupt, metric, names, batch_size, should_cancel):
        idx, x, xc, ax, ac, mc = pc.idx, pc.x, pc.xc, pc.cache_x, pc.cache_c, pc.m_c
        chunk = idx.tolist()
        pos = {k: v[idx] for k, v in positions.items()} if positions is not None else None
        fw += 2 * len(chunk)
        m_x[idx], m_cf[idx] = pc.m_x, mc
        delta = {k: ax[k] - ac[k] for k in names}
        if method == "act_diff":
            s = node_values(nodes, {k: d.pow(2) for k, d in delta.items()}, pos).sqrt()
        elif method in ("atp", "grad"):
            m, acts = _grads(model, xc if method == "atp" else x, names, metric, idx)
            g = dict(zip(names, torch.autograd.grad(m.sum(), [acts[k] for k in names])))
            fw, bw = fw + len(chunk), bw + len(chunk)
            if method == "atp":
                s = node_values(nodes, {k: delta[k] * g[k] for k in names}, pos)
            else:
                s = node_values(nodes, {k: g[k].pow(2) for k in names}, pos).sqrt()
        elif method == "grad_act":
            m, acts = _grads(model, x, names, metric, idx)
            g = dict(zip(names, torch.autograd.grad(m.sum(), [acts[k] for k in names])))
            fw, bw = fw + len(chunk), bw + len(chunk)
            s = node_values(nodes, {k: ax[k] * g[k] for k in names}, pos)
        elif method == "ig":
            s, f, b = _ig_chunk(model, x, xc, idx, nodes, names, metric, delta, pos, ig_steps)
            fw, bw = fw + f, bw + b
        elif method == "atp_star":
            s, info = atp_star_chunk(model, xc, idx, nodes, metric, delta, ax, pos)
            fw, bw = fw + info["forwards"], bw + info["backwards"]
            extra["attention_forwards"] += info["attention_forwards"]
        else:  # exact: progress per block of nodes, so a long sweep over one batch of examples still moves
            def block_done(k, total, done=done, size=len(chunk)):
                if progress:
                    progress((done + size * k / total) / n, f"exact: {k}/{total} nodes of examples "
                             f"{done + 1}-{done + size} of {n}")
            s, f = _exact_chunk(model, xc, idx, nodes, ax, pos, metric, mc, node_chunk, should_cancel, block_done)
            fw += f
        out[idx] = s.detach().float().cpu()
        done += len(chunk)
        if progress:
            progress(done / n, f"{method}: {done}/{n} examples")
    return fw, bw, done


def _ig_chunk(model, x, xc, idx, nodes, names, metric, delta, pos, steps: int):
    """Integrated gradients along the straight line between the two inputs' token embeddings:
    ([batch, n_nodes], forwards, backwards)."""
    with torch.no_grad():
        e_x, e_c = model.embed(x), model.embed(xc)
    b = len(x)
    alphas = (torch.arange(steps, dtype=e_x.dtype, device=e_x.device) + 0.5) / steps
    total = {k: torch.zeros_like(delta[k]) for k in names}
    for a in alphas:
        m, acts = _grads(model, x, names, metric, idx, embed_override=lambda act, a=a: e_c + a * (e_x - e_c))
        g = torch.autograd.grad(m.sum(), [acts[k] for k in names])
        for k, gk in zip(names, g):
            total[k] += gk / steps
    s = node_values(nodes, {k: delta[k] * total[k] for k in names}, pos)
    return s, steps * b, steps * b


def _exact_chunk(model, xc, idx, nodes, clean_cache, pos, metric, m_corrupt, node_chunk: int, should_cancel,
                 on_block=None):
    """Denoise one node at a time, node_chunk nodes per batched forward: ([batch, n_nodes] effect in metric
    units, forwards). on_block(nodes done, n_nodes) after each batched forward."""
    b = len(xc)
    s = torch.zeros(b, len(nodes))
    fw = 0
    for a in range(0, len(nodes), node_chunk):
        check_cancelled(should_cancel)
        block = list(range(a, min(a + node_chunk, len(nodes))))
        keep = torch.ones(len(block), len(nodes), dtype=torch.bool)  # keep = stay on x'
        for r, j in enumerate(block):
            keep[r, j] = False
        hooks = node_mask_hooks(nodes, keep, clean_cache, pos, rows_per_mask=b)
        with torch.no_grad():
            logits = model.run_with_hooks(xc.repeat(len(block), 1), fwd_hooks=hooks + [last_position_hook(model)])
        m = final_metric(model, logits, metric, idx.repeat(len(block))).cpu().view(len(block), b)
        s[:, block] = (m - m_corrupt[None]).T
        fw += len(block) * b
        if on_block is not None:
            on_block(block[-1] + 1, len(nodes))
    return s, fw
