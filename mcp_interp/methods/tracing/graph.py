"""The attribution graph of one prompt: every direct effect between its nodes, by chunked batched pull-backs.

Nodes, in this order (circuit-tracer's): feature nodes (active transcoder latents, layer-major, then position, then
latent), error nodes (one per MLP layer and position, layer-major), token nodes (one per position), logit nodes (the
targets). adjacency[t, s] is the direct effect of source s on target t in the frozen local replacement model
(`replacement`); rows exist for features and logits (errors and tokens have no inputs). Row t satisfies
sum_s adjacency[t, s] + constants[t] = value of t (`AttributionGraph.identity_error`).

Memory: the run keeps O(L T^2 H + L T d) floats; rows are computed in chunks of `batch_size` targets (or as many as
`chunk_mb` allows, `backward.row_bytes` each), written straight into the square adjacency when every latent is
kept. `max_feature_nodes` bounds the feature rows: latents are then visited in order of their current estimated
influence on the targets (re-estimated from the rows so far every `update_every` chunks), as the published method
does, into a [rows, sources] matrix; the graph keeps only the visited latents as feature nodes, and what the others
sent each row is kept as `dropped` (so the identity still closes). `footprint.trace_footprint` states the peak.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.progress import Progress, ShouldCancel, check_cancelled
from .backward import Backward, row_bytes
from .pruning import influence, normalized_rows
from .replacement import FrozenRun, check_model, freeze
from .targets import LogitTarget, as_targets, readout, salient_targets, target_value, target_weights
from .transcoders import tracing_transcoders

CHUNK_MB = 256  # default memory for one chunk of rows in flight


@dataclass
class AttributionGraph:
    """tokens [T], token_labels [T]; features [F, 3] (layer, position, latent) and activations [F] of the feature
    nodes; error_layers: the MLP layers (error nodes layer-major, T each) and error_norms [E] (|err| of each);
    targets [K] with target_labels, target_values [K] (from the real model's logits) and target_weights [K];
    adjacency [N, N] (rows: targets of edges, columns: sources); constants [N] (bias terms of each row; 0 for
    errors and tokens); n_layers; n_active: active latents before `max_feature_nodes` kept `F` of them; dropped [N]:
    what each row received from the active latents `max_feature_nodes` left out (None: none were); rows: the
    pulled-back rows; seconds."""

    tokens: Tensor
    token_labels: list[str]
    features: Tensor
    activations: Tensor
    error_layers: list[int]
    error_norms: Tensor
    targets: list[LogitTarget]
    target_labels: list[str]
    target_values: Tensor
    target_weights: Tensor
    adjacency: Tensor
    constants: Tensor
    n_layers: int
    n_active: int
    dropped: Tensor | None = None
    rows: int = 0
    seconds: float = 0.0

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_errors(self) -> int:
        return len(self.error_layers) * self.n_tokens

    @property
    def n_logits(self) -> int:
        return len(self.targets)

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_tokens + self.n_logits

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_errors

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_tokens

    def feature_index(self, layer: int, position: int, latent: int) -> int | None:
        """The node index of a latent, or None when it is not a feature node of this graph."""
        hit = ((self.features[:, 0] == layer) & (self.features[:, 1] == position) &
               (self.features[:, 2] == latent)).nonzero().flatten()
        return int(hit[0]) if len(hit) else None

    def error_index(self, layer: int, position: int) -> int:
        return self.error_start + self.error_layers.index(layer) * self.n_tokens + position

    def token_index(self, position: int) -> int:
        return self.token_start + position

    def logit_index(self, k: int = 0) -> int:
        return self.logit_start + k

    def kind(self, i: int) -> str:
        """"feature", "error", "token" or "logit"."""
        if i < self.error_start:
            return "feature"
        if i < self.token_start:
            return "error"
        return "token" if i < self.logit_start else "logit"

    def depth(self) -> Tensor:
        """[N] where each node sits in the model: -1 tokens, l for layer l's latents and error nodes, n_layers for
        logits. Every edge goes from a smaller depth to a larger one."""
        d = torch.empty(self.n_nodes, dtype=torch.long)
        d[:self.n_features] = self.features[:, 0]
        d[self.error_start:self.token_start] = torch.tensor(self.error_layers, dtype=torch.long).repeat_interleave(
            self.n_tokens)
        d[self.token_start:self.logit_start] = -1
        d[self.logit_start:] = self.n_layers
        return d

    def label(self, i: int) -> str:
        """A node in words: 'L1 #5 @3 "="' (layer, latent, position, token there), 'error L0 @2', 'token "a" @0',
        'logit "p"'."""
        kind = self.kind(i)
        if kind == "feature":
            l, p, f = (int(v) for v in self.features[i])
            return f"L{l} #{f} @{p} {self.token_labels[p]!r}"
        if kind == "error":
            j = i - self.error_start
            return f"error L{self.error_layers[j // self.n_tokens]} @{j % self.n_tokens}"
        if kind == "token":
            p = i - self.token_start
            return f"token {self.token_labels[p]!r} @{p}"
        return f"logit {self.target_labels[i - self.logit_start]}"

    def values(self) -> Tensor:
        """[N] each node's value: a feature's activation, a logit target's value; NaN for error and token nodes (they
        have no scalar value: their edges carry their whole vectors)."""
        v = torch.full((self.n_nodes,), float("nan"))
        v[:self.n_features] = self.activations
        v[self.logit_start:] = self.target_values
        return v

    def identity_error(self) -> float:
        """max over feature and logit rows of |sum of the row's edges + its constant - its value| (the identity of
        the frozen affine model, see `replacement`; latents left out by `max_feature_nodes` count with `dropped`);
        0 up to float rounding."""
        rows = torch.cat([torch.arange(self.n_features), torch.arange(self.logit_start, self.n_nodes)])
        total = self.adjacency[rows].double().sum(1) + self.constants[rows].double()
        if self.dropped is not None:
            total = total + self.dropped[rows].double()
        return float((total - self.values()[rows].double()).abs().max()) if len(rows) else 0.0

    def logit_weights(self) -> Tensor:
        """[N]: the target weights at the logit nodes, 0 elsewhere (the start of every influence computation)."""
        w = torch.zeros(self.n_nodes)
        w[self.logit_start:] = self.target_weights
        return w


def _check_tokens(model, tokens) -> Tensor:
    t = torch.as_tensor(tokens)
    if t.ndim != 1 or t.numel() == 0 or t.dtype not in (torch.int32, torch.int64):
        raise ValueError("tokens: one prompt as a 1-D sequence of token ids")
    if int(t.min()) < 0 or int(t.max()) >= model.cfg.d_vocab:
        raise ValueError(f"tokens: ids must be in 0..{model.cfg.d_vocab - 1}")
    if t.numel() > model.cfg.n_ctx:
        raise ValueError(f"tokens: {t.numel()} tokens exceed the model's context of {model.cfg.n_ctx}")
    return t.long()


def chunk_size(model, n_pos: int, n_sources: int, chunk_mb: float = CHUNK_MB) -> int:
    """How many rows one pull-back may carry within chunk_mb MB (at least 1)."""
    return max(1, int(chunk_mb * 2**20) // row_bytes(model.cfg, n_pos, n_sources))


def attribution_graph(model, tokens, transcoders, targets=None, *, max_feature_nodes: int | None = None,
                      batch_size: int | None = None, chunk_mb: float = CHUNK_MB, update_every: int = 4,
                      max_n_logits: int = 10, desired_logit_prob: float = 0.95,
                      token_str: Callable[[int], str] | None = None, progress: Progress | None = None,
                      should_cancel: ShouldCancel | None = None) -> AttributionGraph:
    """The attribution graph of `tokens` (one prompt, [T] ids) through `transcoders` (layer -> transcoder: sae-lens,
    sparsify or TracingTranscoder; an MLP layer without one is all error) towards `targets` (LogitTarget(s) or token
    ids; None: the most likely next tokens, `targets.salient_targets`). ValueError naming the argument for input
    the method cannot trace exactly."""
    t0 = time.perf_counter()
    check_model(model)
    progress = progress or (lambda f, m: None)
    toks = _check_tokens(model, tokens)
    cfg = model.cfg
    tcs = {l: t.to(cfg.device) for l, t in tracing_transcoders(transcoders, cfg.d_model, cfg.n_layers).items()}
    if cfg.attn_only and tcs:
        raise ValueError("transcoders: the model is attention-only: it has no MLPs to transcode")
    if max_feature_nodes is not None and max_feature_nodes < 0:
        raise ValueError("max_feature_nodes: give a number >= 0, or None for every active latent")
    if batch_size is not None and batch_size < 1:
        raise ValueError("batch_size: give a number >= 1")
    run = freeze(model, toks, tcs)
    tlist = as_targets(targets, cfg.d_vocab) if targets is not None else salient_targets(
        run.logits, max_n_logits, desired_logit_prob)
    check_cancelled(should_cancel)
    bw = Backward(model, run)
    F, K, T, L = bw.n_features, len(tlist), run.n_pos, cfg.n_layers
    M = F if max_feature_nodes is None else min(max_feature_nodes, F)
    n_cols = bw.n_sources + K
    B = batch_size or chunk_size(model, T, bw.n_sources, chunk_mb)
    square = M == F  # every latent kept: rows go straight into the square adjacency, at their node's index
    rows = torch.zeros(n_cols if square else K + M, n_cols)
    row_node = torch.arange(n_cols) if square else torch.zeros(K + M, dtype=torch.long)  # each row's node
    weights = target_weights(tlist, run.logits)
    vecs, consts = zip(*(readout(model, t) for t in tlist))
    logit_vec = torch.stack(vecs)
    logit_const = torch.tensor(consts)
    total = K + M
    for s in range(0, K, B):
        check_cancelled(should_cancel)
        e = min(s + B, K)
        edges, c = bw.rows(torch.full((e - s,), L), torch.full((e - s,), T - 1), logit_vec[s:e], logit_const[s:e])
        at = slice(bw.n_sources + s, bw.n_sources + e) if square else slice(s, e)
        rows[at, :bw.n_sources] = edges.cpu()
        if not square:
            row_node[s:e] = torch.arange(s, e) + bw.n_sources
        logit_const[s:e] = c.cpu()
    progress(K / total, f"attribution graph: {K}/{total} rows")
    feat_const = torch.zeros(F)
    visited = torch.zeros(F, dtype=torch.bool)
    st = K
    while st < K + M:
        if M == F:  # every latent: the deepest first, so a chunk's pull-back starts as low as it can
            pending = torch.argsort(run.features[:, 0].cpu(), descending=True, stable=True)
        else:
            infl = influence(normalized_rows(rows[:st]), row_node[:st], _start(n_cols, bw.n_sources, weights))
            rank = torch.argsort(infl[:F], descending=True, stable=True)
            pending = rank[~visited[rank]][:min(update_every * B, K + M - st)]
            depth = run.features[pending.to(run.features.device), 0].cpu()
            pending = pending[torch.argsort(depth, descending=True, stable=True)]  # chunks of one depth cost least
        for s in range(0, len(pending), B):
            check_cancelled(should_cancel)
            idx = pending[s:s + B]
            fl, fp, fi = (run.features[idx.to(run.features.device), j] for j in range(3))
            vec = torch.zeros(len(idx), cfg.d_model, device=run.embed.device)
            const = torch.zeros(len(idx))
            for l in fl.unique().tolist():
                m = fl == l
                vec[m] = tcs[l].W_enc[:, fi[m]].T
                const[m.cpu()] = tcs[l].b_enc[fi[m]].cpu()
            edges, c = bw.rows(fl, fp, vec, const)
            n = len(idx)
            if square:
                rows[idx, :bw.n_sources] = edges.cpu()
            else:
                rows[st:st + n, :bw.n_sources] = edges.cpu()
                row_node[st:st + n] = idx
            feat_const[idx] = c.cpu()
            visited[idx] = True
            st += n
            progress(st / total, f"attribution graph: {st}/{total} rows")
    return _assemble(run, tlist, token_str, rows, row_node, visited, feat_const, logit_const, weights, bw, L,
                     time.perf_counter() - t0)


def _start(n_cols: int, n_sources: int, weights: Tensor) -> Tensor:
    v = torch.zeros(n_cols)
    v[n_sources:] = weights
    return v


def _assemble(run: FrozenRun, tlist, token_str, rows, row_node, visited, feat_const, logit_const, weights,
              bw: Backward, n_layers: int, seconds: float) -> AttributionGraph:
    """The square adjacency over the visited latents, error nodes, tokens and logits."""
    F, K = bw.n_features, len(tlist)
    keep = visited.nonzero().flatten()  # ascending: the run's layer-major order
    cols = torch.cat([keep, torch.arange(F, bw.n_sources + K)])
    n = len(cols)
    dropped = None
    if len(keep) == F:  # the rows are the square adjacency already
        adj = rows
    else:
        adj = torch.zeros(n, n)
        new_index = torch.full((bw.n_sources + K,), -1, dtype=torch.long)
        new_index[cols] = torch.arange(n)
        adj[new_index[row_node]] = rows[:, cols]
        left = torch.ones(F, dtype=torch.bool)
        left[keep] = False
        dropped = torch.zeros(n)
        dropped[new_index[row_node]] = rows[:, :F][:, left].sum(1)
    constants = torch.zeros(n)
    constants[:len(keep)] = feat_const[keep]
    constants[n - K:] = logit_const
    name = token_str or str
    labels = [name(int(t)) for t in run.tokens.cpu()]
    tlabels = [t.label or (repr(name(t.token)) if t.counterfactual is None else
                           f"{name(t.token)!r} - {name(t.counterfactual)!r}") for t in tlist]
    err_norms = torch.cat([run.errors[l].norm(dim=-1).cpu() for l in run.mlp_layers]) if run.mlp_layers else \
        torch.zeros(0)
    return AttributionGraph(tokens=run.tokens.cpu(), token_labels=labels,
                            features=run.features[keep.to(run.features.device)].cpu(),
                            activations=run.activations[keep.to(run.activations.device)].cpu(),
                            error_layers=list(run.mlp_layers), error_norms=err_norms, targets=list(tlist),
                            target_labels=tlabels,
                            target_values=torch.tensor([target_value(run.logits, t) for t in tlist]),
                            target_weights=weights.float(), adjacency=adj, constants=constants, n_layers=n_layers,
                            n_active=F, dropped=dropped, rows=len(row_node), seconds=seconds)


__all__ = ["CHUNK_MB", "AttributionGraph", "attribution_graph", "chunk_size"]
