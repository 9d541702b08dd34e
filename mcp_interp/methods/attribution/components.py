r"""The units attribution scores, as core `Site`s, and the hooks that read and patch them.

Nodes (`nodes_for`), one `Site` each, patched at every position (positions before the first
differing token are identical in both runs, so that equals patching from the first difference on):

| level | site | unit name | hook |
|---|---|---|---|
| heads | Site("z", l, head=h) | L3H2 | blocks.l.attn.hook_z[:, :, h] |
| mlps | Site("mlp_post", l) | MLP3 | blocks.l.mlp.hook_post (*) |
| neurons | Site("mlp_post", l, neuron=i) | L3N7 | blocks.l.mlp.hook_post[..., i] |
| positions | Site("resid_pre", l, position="IO") | P:IO | blocks.l.hook_resid_pre at the token of named position IO |
| qkv | Site("q" \| "k" \| "v", l, head=h) | L3H2.q, L3G1.k | blocks.l.hook_{q,k,v}_input[:, :, h] (split_inputs) |

(*) patching the MLP's hidden activations is patching its output; gradients there only see what the
MLP can write. A head's query / key / value input node is the residual stream as that head's query, key
or value reads it (keys and values per key-value group under GQA): patching it patches the head's query,
key or value vector exactly; it needs `split_inputs`. Named positions are looked up in a `positions` mapping:
position name -> [batch] token
index.

Edges (`Edge`) run from a sender's output through the residual stream into a receiver's input.
Senders (`senders`): Site("embed", -1) (token plus positional embedding), Site("z", l, head=h) (the
head's output, z @ W_O[h]; on blocks that normalise their output, its share of the normalised output, so the
senders still sum to the residual stream: core.writes) and Site("mlp_out", l).
Receivers (`receivers`): each head's query, key and
value input, Site("q" | "k" | "v", l, head=h) (with grouped-query attention keys and values belong to
key/value groups: Site("k", l, head=g, grouped=True), "L3G1.k"), each MLP's input Site("mlp_in", l)
and the unembedding's input Site("logits", n_layers). A sender feeds every receiver in a later layer,
and the MLP of its own layer. Edge names render as "<sender.name>-><receiver.name>", e.g.
"embed->L0H0.v", "L0H0->MLP1", "MLP1->logits".
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..core.sites import Site, n_kv_heads
from ..core.writes import head_writes

Level = Literal["heads", "mlps", "neurons", "positions", "qkv"]
NODE_LEVELS = ("heads", "mlps", "neurons", "positions", "qkv")
QKV = ("q", "k", "v")


def has_mlps(model) -> bool:
    """The model's blocks have MLPs (it is not attention-only)."""
    return not model.cfg.attn_only


# ------------------------------------------------------------------------------------ nodes

def nodes_for(model, level: str, layer: int | None = None, position_names: list[str] | None = None) -> list[Site]:
    """The nodes of one level, in score order (see the module table).

    level: "heads" (every head of every layer, layer-major), "mlps" (every MLP), "neurons" (the d_mlp
    neurons of MLP `layer`), "positions" (the residual stream entering block `layer`, default 0, at each
    of `position_names`), "qkv" (each head's query input and each key-value head's key and value input, layer
    by layer, in `receivers` order). Returns one `Site` per node; ValueError for an unknown level or a site
    the model lacks."""
    cfg = model.cfg
    if level == "heads":
        sites = [Site("z", l, head=h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    elif level == "mlps":
        sites = [Site("mlp_post", l) for l in range(cfg.n_layers)]
    elif level == "neurons":
        if layer is None:
            raise ValueError("level 'neurons' scores the neurons of one MLP layer: pass `layer`")
        sites = [Site("mlp_post", layer, neuron=i) for i in range(cfg.d_mlp)]
    elif level == "positions":
        sites = [Site("resid_pre", layer or 0, position=p) for p in position_names or []]
    elif level == "qkv":
        sites = [r for r in receivers(model) if r.kind in QKV]
    else:
        raise ValueError(f"unknown level {level!r}; one of {NODE_LEVELS}")
    for s in sites[:1] + sites[-1:]:  # the extremes of a level: enough to catch a layer or index out of range
        s.check(model)
    return sites


def _part(site: Site) -> str:
    """Which slice of its hook tensor a node occupies: head | neuron | position | whole."""
    if site.kind in ("z", *QKV) and site.position is None:
        return "head"
    if site.kind == "mlp_post" and site.neuron is not None and site.position is None:
        return "neuron"
    if site.kind in ("resid_pre", "resid_post") and isinstance(site.position, str):
        return "position"
    if site.kind in ("resid_pre", "resid_post", "attn_out", "mlp_post", "mlp_out") and site.position is None:
        return "whole"
    raise ValueError(f"{site.label}: attribution nodes are head outputs (z) or q/k/v inputs, MLP activations "
                     f"(mlp_post, one neuron "
                     f"or all), whole residual / output sites, or the residual stream at a named position")


def node_hooks(nodes: list[Site]) -> list[str]:
    """Sorted, distinct hook names holding the nodes' activations."""
    for n in nodes:
        _part(n)
    return sorted({n.hook for n in nodes})


def node_values(nodes: list[Site], tensors: Mapping[str, Tensor],
                positions: Mapping[str, Tensor] | None = None) -> Tensor:
    """Sum a per-element quantity (e.g. delta * grad) within each node.

    tensors: hook name -> [batch, pos, ...] (the hook's activation shape, e.g. [batch, pos, head_index,
    d_head] for hook_z); positions: position name -> [batch] token index of that named position in each
    example (needed for position nodes). Returns [batch, n_nodes]."""
    cols = []
    for n in nodes:
        t = tensors[n.hook]
        part = _part(n)
        if part == "head":
            cols.append(t[:, :, n.head].flatten(1).sum(1))
        elif part == "whole":
            cols.append(t.flatten(1).sum(1))
        elif part == "neuron":
            cols.append(t[..., n.neuron].sum(1))
        else:
            rows = torch.arange(t.shape[0], device=t.device)
            cols.append(t[rows, positions[n.position].to(t.device)].sum(-1))
    return torch.stack(cols, 1)


def node_mask_hooks(nodes: list[Site], keep: Tensor, source: Mapping[str, Tensor],
                    positions: Mapping[str, Tensor] | None = None, rows_per_mask: int = 1) -> list[tuple[str, object]]:
    """Forward hooks that replace every node with keep == False by its value in `source` (the other run).

    keep: [n_masks, n_nodes] bool. The batch the hooks see holds n_masks blocks of rows_per_mask rows
    each (mask k applies to rows k*rows_per_mask .. (k+1)*rows_per_mask - 1). source: hook name ->
    [rows_per_mask, pos, ...] activations of the other run (broadcast over masks); positions: position
    name -> [rows_per_mask] token index. Returns [(hook name, hook fn)] for `model.run_with_hooks`."""
    by_hook: dict[str, list[int]] = {}
    for j, n in enumerate(nodes):
        by_hook.setdefault(n.hook, []).append(j)

    def make(hook_name: str, idx: list[int]):
        def hook(act, hook):
            src = source[hook_name].to(act.device)
            reps = act.shape[0] // src.shape[0]
            src = src.repeat(reps, *[1] * (src.dim() - 1))
            drop = ~keep[:, idx].to(act.device).repeat_interleave(rows_per_mask, 0)  # [rows, len(idx)]
            out = act.clone()
            for c, j in enumerate(idx):
                n = nodes[j]
                part = _part(n)
                r = drop[:, c]
                if not r.any():
                    continue
                if part == "head":
                    out[r, :, n.head] = src[r, :, n.head]
                elif part == "whole":
                    out[r] = src[r]
                elif part == "neuron":
                    out[r, :, n.neuron] = src[r, :, n.neuron]
                else:
                    rr = r.nonzero().flatten()
                    p = positions[n.position].to(act.device).repeat(reps)[rr]
                    out[rr, p] = src[rr, p]
            return out
        return hook

    return [(h, make(h, idx)) for h, idx in by_hook.items()]


# ------------------------------------------------------------------------------------ edges

@dataclass(frozen=True)
class Edge:
    """`sender`'s output read by `receiver`'s input through the residual stream.

    sender: Site of kind embed | z | mlp_out; receiver: Site of kind q | k | v | mlp_in | logits."""

    sender: Site
    receiver: Site

    @property
    def name(self) -> str:
        """"<sender>-><receiver>", e.g. "L0H0->MLP1", "embed->L0H0.v"."""
        return f"{self.sender.name}->{self.receiver.name}"


def senders(model) -> list[Site]:
    """Every component writing into the residual stream, in edge-table row order: embed, then per layer its
    heads (z) and its MLP output (mlp_out, unless attention-only)."""
    cfg = model.cfg
    out = [Site("embed", -1)]
    for l in range(cfg.n_layers):
        out += [Site("z", l, head=h) for h in range(cfg.n_heads)]
        if has_mlps(model):
            out.append(Site("mlp_out", l))
    return out


def receivers(model) -> list[Site]:
    """Every input reading the residual stream, in edge-table column order: per layer each head's q input,
    each key/value head's (or group's, under GQA) k and v inputs and the MLP input (mlp_in), then the
    unembedding's input (logits)."""
    cfg = model.cfg
    grouped = n_kv_heads(cfg) != cfg.n_heads
    out = []
    for l in range(cfg.n_layers):
        out += [Site("q", l, head=h) for h in range(cfg.n_heads)]
        for kind in ("k", "v"):
            out += [Site(kind, l, head=g, grouped=grouped) for g in range(n_kv_heads(cfg))]
        if has_mlps(model):
            out.append(Site("mlp_in", l))
    out.append(Site("logits", cfg.n_layers))
    return out


def receiver_unit(r: Site) -> str:
    """Name of the component a receiver is an input of: the head or key/value group of a q/k/v input
    ("L3H2", "L3G1"), else the receiver's own name ("MLP3", "logits")."""
    return r.unit


def edge_allowed(model, s: Site, r: Site) -> bool:
    """Sender `s`'s output reaches receiver `r`'s input through the residual stream: `s` sits in an earlier
    layer, or is a head and `r` the MLP of its own layer (sequential, not parallel, attention and MLP)."""
    if s.layer < r.layer:
        return True
    return s.layer == r.layer and r.kind == "mlp_in" and s.kind == "z" and not model.cfg.parallel_attn_mlp


def edge_mask_allowed(model, S: list[Site], R: list[Site]) -> Tensor:
    """[n_senders, n_receivers] bool: `edge_allowed` for every pair."""
    return torch.tensor([[edge_allowed(model, s, r) for r in R] for s in S], dtype=torch.bool)


def receiver_slot(r: Site, act: Tensor) -> Tensor:
    """The receiver's input inside its hook tensor: [batch, pos, head_index, d_model] -> [batch, pos, d_model]
    (the head's slice) for q/k/v; the tensor itself ([batch, pos, d_model]) for mlp_in and logits."""
    return act[:, :, r.head] if r.kind in QKV else act


@contextmanager
def split_inputs(model):
    """Give every head its own q/k/v input hook (`hook_{q,k,v}_input`, [batch, pos, head_index, d_model])
    and every MLP an input hook (`hook_mlp_in`), restoring the config after."""
    cfg = model.cfg
    old = (cfg.use_split_qkv_input, cfg.use_hook_mlp_in, cfg.use_attn_result)
    model.set_use_split_qkv_input(True)
    if has_mlps(model):
        model.set_use_hook_mlp_in(True)
    try:
        yield
    finally:
        model.set_use_split_qkv_input(old[0])
        cfg.use_hook_mlp_in = old[1]
        cfg.use_attn_result = old[2]


def sender_outputs(model, cache: Mapping[str, Tensor], S: list[Site]) -> Tensor:
    """Each sender's write into the residual stream, from a cache holding `sender_hooks(model, S)`.

    cache: hook name -> activation ([batch, pos, d_model]; hook_z [batch, pos, head_index, d_head]).
    Returns [batch, pos, n_senders, d_model]."""
    outs = []
    for s in S:
        if s.kind == "embed":
            e = cache["hook_embed"]
            if "hook_pos_embed" in cache and model.cfg.positional_embedding_type == "standard":
                e = e + cache["hook_pos_embed"]
            outs.append(e)
        elif s.kind == "z":  # on post-norm blocks: the head's share of the normalised output (core.writes)
            outs.append(head_writes(model, s.layer, cache[s.hook], [s.head])[:, :, 0])
        else:
            outs.append(cache[s.hook])
    return torch.stack(outs, 2)


def sender_hooks(model, S: list[Site]) -> list[str]:
    """Sorted hook names `sender_outputs` reads: the embeddings, hook_z of layers with head senders,
    hook_mlp_out of MLP senders."""
    names = {"hook_embed"}
    if model.cfg.positional_embedding_type == "standard":
        names.add("hook_pos_embed")
    for s in S:
        if s.kind != "embed":
            names.add(s.hook)
    return sorted(names)
