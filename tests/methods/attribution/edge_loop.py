"""The per-receiver masked forward that mcp_interp shipped before the vectorised one (masked.py), kept verbatim
as the test and benchmark oracle: for each receiver, each sender marked in the mask adds its (other - current)
difference, one tensor operation per (sender, receiver) pair."""

from __future__ import annotations

import torch
from torch import Tensor

from mcp_interp.methods.attribution import final_metric
from mcp_interp.methods.core import Metric, Site
from mcp_interp.methods.core.writes import head_writes

QKV = ("q", "k", "v")


def _receiver_groups(R: list[Site]) -> dict[str, list[tuple[int, Site]]]:
    groups: dict[str, list[tuple[int, Site]]] = {}
    for j, r in enumerate(R):
        groups.setdefault(r.hook, []).append((j, r))
    return groups


def loop_masked_forward(model, base: Tensor, other: Tensor, masks: Tensor, metric: Metric, idx: Tensor,
                   S: list[Site], R: list[Site]) -> Tensor:
    """The exact edge intervention: a forward on `base` where edge (s, r) with masks[k, s, r] carries s's value
    from the other run instead of the current one.

    base: [batch, pos] tokens; other: the other run's sender outputs [batch, pos, n_senders, d_model]
    (`components.sender_outputs`); masks: [n_masks, n_senders, n_receivers] bool; idx: [batch] example
    indices for `metric`. Returns the metric [n_masks, batch]. Must run inside components.split_inputs(model)."""
    k, b = masks.shape[0], base.shape[0]
    dev = base.device
    rows = base.repeat(k, 1)
    row_mask = masks.to(dev).float().repeat_interleave(b, 0)  # [k*b, S, R]
    other_out = other.repeat(k, 1, 1, 1)  # [k*b, p, S, d]
    current: dict[int, Tensor] = {}
    embed_parts: dict[str, Tensor] = {}  # token and positional embedding: the embed sender is their sum
    embed_i = next(i for i, s in enumerate(S) if s.kind == "embed")
    mlp_senders = {s.layer: i for i, s in enumerate(S) if s.kind == "mlp_out"}
    head_senders: dict[int, list[tuple[int, Site]]] = {}
    for i, s in enumerate(S):
        if s.kind == "z":
            head_senders.setdefault(s.layer, []).append((i, s))

    def on_embed_part(act, hook):
        embed_parts[hook.name] = act
        current[embed_i] = sum(embed_parts.values())
        return act

    def on_z(act, hook, layer):
        for i, s in head_senders[layer]:  # (on post-norm blocks a head's share of the normalised output)
            current[i] = head_writes(model, layer, act, [s.head])[:, :, 0]
        return act

    def on_mlp(act, hook, i):
        current[i] = act
        return act

    def on_receiver(act, hook, js):
        out = act.clone()
        for j, r in js:
            srcs = [i for i in current if row_mask[:, i, j].any()]
            if not srcs:
                continue
            corr = sum(row_mask[:, i, j, None, None] * (other_out[:, :, i] - current[i]) for i in srcs)
            if r.kind in QKV:
                out[:, :, r.head] = out[:, :, r.head] + corr
            else:
                out = out + corr
        return out

    hooks = []
    hooks.append(("hook_embed", on_embed_part))
    if model.cfg.positional_embedding_type == "standard":
        hooks.append(("hook_pos_embed", on_embed_part))
    for l in range(model.cfg.n_layers):
        if l in head_senders:
            hooks.append((f"blocks.{l}.attn.hook_z", lambda a, hook, l=l: on_z(a, hook, l)))
        if l in mlp_senders:
            hooks.append((S[mlp_senders[l]].hook, lambda a, hook, i=mlp_senders[l]: on_mlp(a, hook, i)))
    # Receivers read senders computed earlier in the same forward; TL runs hooks in forward order.
    for name, js in _receiver_groups(R).items():
        hooks.append((name, lambda a, hook, js=js: on_receiver(a, hook, js)))
    with torch.no_grad():
        logits = model.run_with_hooks(rows, fwd_hooks=hooks)
    return final_metric(model, logits, metric, idx.repeat(k)).view(k, b)

