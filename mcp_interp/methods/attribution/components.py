"""Components of a TransformerLens model as attribution nodes and edges.

Node levels: attention heads (`LxHy`, output `blocks.x.attn.hook_z[:, :, y]`), MLP layers (`MLPx`,
their neurons `blocks.x.mlp.hook_post`: patching those is patching the MLP's output, and gradients
there only see what the MLP can write), the neurons of one MLP layer (`LxNy`, `blocks.x.mlp.hook_post[..., y]`) and
named positions of the residual stream at one layer (`P:<name>`, `blocks.x.hook_resid_pre` at that
token). A node is patched at every position (positions before the first differing token are
identical in both runs, so that equals patching from the first difference on).

Edges run from a sender's output through the residual stream into a receiver's input. Senders:
`embed` (token plus positional embedding), every head's output and every MLP's output. Receivers:
each head's query, key and value inputs (`LxHy.q|k|v`; with grouped-query attention keys and values
belong to key/value groups, `LxGy.k|v`), each MLP's input (`MLPx`) and the unembedding (`logits`).
A sender feeds every receiver in a later layer, and the MLP of its own layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

Level = Literal["heads", "mlps", "neurons", "positions"]


@dataclass(frozen=True)
class Node:
    name: str
    kind: str  # head | mlp | neuron | pos
    layer: int
    index: int | None = None  # head, neuron, or column into the positions table


def has_mlps(model) -> bool:
    return not model.cfg.attn_only


def nodes_for(model, level: str, layer: int | None = None, position_names: list[str] | None = None) -> list[Node]:
    cfg = model.cfg
    if level == "heads":
        return [Node(f"L{l}H{h}", "head", l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    if level == "mlps":
        return [Node(f"MLP{l}", "mlp", l) for l in range(cfg.n_layers)]
    if level == "neurons":
        return [Node(f"L{layer}N{i}", "neuron", layer, i) for i in range(cfg.d_mlp)]
    if level == "positions":
        return [Node(f"P:{p}", "pos", layer or 0, j) for j, p in enumerate(position_names or [])]
    raise ValueError(f"unknown level {level!r}")


def node_hook(node: Node) -> str:
    return {"head": f"blocks.{node.layer}.attn.hook_z", "mlp": f"blocks.{node.layer}.mlp.hook_post",
            "neuron": f"blocks.{node.layer}.mlp.hook_post", "pos": f"blocks.{node.layer}.hook_resid_pre"}[node.kind]


def node_hooks(nodes: list[Node]) -> list[str]:
    return sorted({node_hook(n) for n in nodes})


def node_values(nodes: list[Node], tensors: dict[str, torch.Tensor], positions: torch.Tensor | None = None) -> torch.Tensor:
    """Sum a per-element product (e.g. delta * grad) within each node: [batch, n_nodes].

    `tensors` maps hook name -> [batch, pos, ...]; `positions` [batch, n_position_names] gives the
    token index of each named position (level "positions")."""
    cols = []
    for n in nodes:
        t = tensors[node_hook(n)]
        if n.kind == "head":
            cols.append(t[:, :, n.index].flatten(1).sum(1))
        elif n.kind == "mlp":
            cols.append(t.flatten(1).sum(1))
        elif n.kind == "neuron":
            cols.append(t[..., n.index].sum(1))
        else:
            rows = torch.arange(t.shape[0], device=t.device)
            cols.append(t[rows, positions[:, n.index].to(t.device)].sum(-1))
    return torch.stack(cols, 1)


def node_mask_hooks(nodes: list[Node], keep: torch.Tensor, source: dict[str, torch.Tensor],
                    positions: torch.Tensor | None = None, rows_per_mask: int = 1):
    """Hooks that replace every node with keep == False by its value in `source` (the other run).

    keep: [n_masks, n_nodes] bool; the batch holds n_masks blocks of rows_per_mask rows each, and
    source tensors have rows_per_mask rows (broadcast over masks)."""
    by_hook: dict[str, list[int]] = {}
    for j, n in enumerate(nodes):
        by_hook.setdefault(node_hook(n), []).append(j)

    def make(hook_name: str, idx: list[int]):
        def hook(act, hook):
            src = source[hook_name].to(act.device)
            reps = act.shape[0] // src.shape[0]
            src = src.repeat(reps, *[1] * (src.dim() - 1))
            drop = ~keep[:, idx].to(act.device).repeat_interleave(rows_per_mask, 0)  # [rows, len(idx)]
            out = act.clone()
            for c, j in enumerate(idx):
                n = nodes[j]
                r = drop[:, c]
                if not r.any():
                    continue
                if n.kind == "head":
                    out[r, :, n.index] = src[r, :, n.index]
                elif n.kind == "mlp":
                    out[r] = src[r]
                elif n.kind == "neuron":
                    out[r, :, n.index] = src[r, :, n.index]
                else:
                    rr = r.nonzero().flatten()
                    p = positions.to(act.device).repeat(reps, 1)[rr, n.index]
                    out[rr, p] = src[rr, p]
            return out
        return hook

    return [(h, make(h, idx)) for h, idx in by_hook.items()]


# ------------------------------------------------------------------------------------ edges

@dataclass(frozen=True)
class Sender:
    name: str
    layer: int  # -1 for the embedding
    head: int | None = None


@dataclass(frozen=True)
class Receiver:
    name: str
    layer: int  # n_layers for the logits
    kind: str   # q | k | v | mlp | logits
    head: int | None = None


def n_kv_heads(cfg) -> int:
    return cfg.n_key_value_heads if getattr(cfg, "n_key_value_heads", None) and not cfg.ungroup_grouped_query_attention \
        else cfg.n_heads


def senders(model) -> list[Sender]:
    cfg = model.cfg
    out = [Sender("embed", -1)]
    for l in range(cfg.n_layers):
        out += [Sender(f"L{l}H{h}", l, h) for h in range(cfg.n_heads)]
        if has_mlps(model):
            out.append(Sender(f"MLP{l}", l))
    return out


def receivers(model) -> list[Receiver]:
    cfg = model.cfg
    grouped = n_kv_heads(cfg) != cfg.n_heads
    out = []
    for l in range(cfg.n_layers):
        out += [Receiver(f"L{l}H{h}.q", l, "q", h) for h in range(cfg.n_heads)]
        for kind in ("k", "v"):
            out += [Receiver(f"L{l}{'G' if grouped else 'H'}{g}.{kind}", l, kind, g) for g in range(n_kv_heads(cfg))]
        if has_mlps(model):
            out.append(Receiver(f"MLP{l}", l, "mlp"))
    out.append(Receiver("logits", cfg.n_layers, "logits"))
    return out


def edge_allowed(model, s: Sender, r: Receiver) -> bool:
    """Sender output reaches the receiver input through the residual stream."""
    if s.layer < r.layer:
        return True
    # Same layer: a head feeds its own layer's MLP (sequential blocks only).
    return s.layer == r.layer and r.kind == "mlp" and s.head is not None and not model.cfg.parallel_attn_mlp


def edge_mask_allowed(model, S: list[Sender], R: list[Receiver]) -> torch.Tensor:
    return torch.tensor([[edge_allowed(model, s, r) for r in R] for s in S], dtype=torch.bool)


def receiver_hook(r: Receiver, n_layers: int) -> str:
    if r.kind == "logits":
        return f"blocks.{n_layers - 1}.hook_resid_post"
    if r.kind == "mlp":
        return f"blocks.{r.layer}.hook_mlp_in"
    return f"blocks.{r.layer}.hook_{r.kind}_input"


@contextmanager
def split_inputs(model):
    """Give every head its own q/k/v input hook and every MLP an input hook, restoring the config after."""
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


def sender_outputs(model, cache: dict[str, torch.Tensor], S: list[Sender]) -> torch.Tensor:
    """Each sender's write into the residual stream: [batch, pos, n_senders, d_model]."""
    outs = []
    for s in S:
        if s.layer < 0:
            e = cache["hook_embed"]
            if "hook_pos_embed" in cache and model.cfg.positional_embedding_type == "standard":
                e = e + cache["hook_pos_embed"]
            outs.append(e)
        elif s.head is not None:
            z = cache[f"blocks.{s.layer}.attn.hook_z"][:, :, s.head]
            outs.append(z @ model.blocks[s.layer].attn.W_O[s.head])
        else:
            outs.append(cache[f"blocks.{s.layer}.hook_mlp_out"])
    return torch.stack(outs, 2)


def sender_hooks(model, S: list[Sender]) -> list[str]:
    names = {"hook_embed"}
    if model.cfg.positional_embedding_type == "standard":
        names.add("hook_pos_embed")
    for s in S:
        if s.layer >= 0:
            names.add(f"blocks.{s.layer}.attn.hook_z" if s.head is not None else f"blocks.{s.layer}.hook_mlp_out")
    return sorted(names)
