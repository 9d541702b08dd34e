"""The masked forward: many edge circuits through the model at once (exact edge patching, circuit faithfulness).

Edge (s, r) marked in a mask makes receiver r read sender s's value from another run instead of the current one:
r's input becomes in_r + sum_s mask[s, r] * (other_s - current_s) (components.py: senders, receivers). Rather than
adding senders one by one per receiver, every sender's difference other_s - current_s is written, as soon as the
forward computes it, into one stacked tensor D [circuits, senders, rows*pos*d_model]; the receivers then apply
their masks as batched matmuls, masks^T [circuits, receivers, senders] @ D. Senders are stacked in forward order,
so the senders a receiver can see are a prefix of D. The matmul is bound by reading D, so all receivers of a layer
(every head's q, k and v input, the MLP input) share one matmul over the senders of earlier layers, run when the
layer's first receiver hook fires; the MLP input adds its own layer's heads at its hook. Circuits share the forward
in the batch dimension (circuit-major
blocks of the examples), chunked so that D stays within a memory budget.

Only the last position's logits are computed (the metric reads nothing else): the residual stream is cut to it
after the last block, so the unembedding costs one position per row instead of all of them. Tokens before the
first one where the two runs differ carry no difference (every sender's value is the same in both runs there), so
with `prefix` they run once, as a frozen key/value cache, and the circuits recompute only the tokens after it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.forward import cache_bytes_per_row, memory_budget, prefix_cache, prefix_reusable, repeat_cache
from ..core.metrics import Metric
from ..core.progress import check_cancelled
from ..core.sites import Site
from ..core.writes import head_writes
from .components import QKV
from .nodes import final_metric

# Default memory for the stacked sender differences D on a CPU; on CUDA a quarter of the free memory, at most 8 GiB.
CPU_BUDGET_BYTES = 1024 << 20
GPU_BUDGET_BYTES = 8 << 30


def _order(s: Site) -> tuple[int, int]:
    """Where a sender is computed or a receiver read in the forward: senders ahead of a receiver are visible to it."""
    rank = {"embed": 0, "q": 0, "k": 0, "v": 0, "z": 1, "mlp_in": 2, "mlp_out": 3, "logits": 0}
    return (s.layer, rank[s.kind])


def budget_bytes(device) -> int:
    """Memory the stacked differences may take on `device`."""
    return memory_budget(device, CPU_BUDGET_BYTES, GPU_BUDGET_BYTES)


def masked_forward(model, base: Tensor, other: Tensor, masks: Tensor, metric: Metric, idx: Tensor,
                   S: list[Site], R: list[Site], max_bytes: int | None = None, should_cancel=None,
                   prefix: int = 0) -> Tensor:
    """The exact edge intervention: a forward on `base` where edge (s, r) with masks[k, s, r] carries s's value
    from the other run instead of the current one.

    base: [batch, pos] tokens; other: the other run's sender outputs [batch, pos, n_senders, d_model]
    (`components.sender_outputs`); masks: [n_masks, n_senders, n_receivers] bool; idx: [batch] example
    indices for `metric`; S, R: senders and receivers in forward order (`components.senders` / `receivers`);
    max_bytes: memory for the stacked differences per forward (default `budget_bytes`); should_cancel: checked
    between forwards; prefix: leading tokens where both runs are the same in every row (`core.shared_prefix` of
    their tokens): run once, not per circuit. Returns the metric [n_masks, batch]. Must run inside
    components.split_inputs(model). ValueError when S is not in forward order."""
    if any(_order(a) > _order(b) for a, b in zip(S, S[1:])):
        raise ValueError("masked_forward: senders must be in forward order (components.senders)")
    # identical circuits (both rankings' full circuit, small circuits both rankings agree on) run once
    uniq, inverse = torch.unique(masks.cpu().flatten(1), dim=0, return_inverse=True)
    masks = uniq.view(-1, *masks.shape[1:])
    # at least the last token runs (the metric reads it)
    prefix = max(0, min(prefix, base.shape[1] - 1)) if prefix_reusable(model) else 0
    head, base, other = base[:, :prefix], base[:, prefix:], other[:, prefix:]
    k_all, (b_all, p) = masks.shape[0], base.shape
    dev = base.device
    # float32 differences of one (circuit, example) row, and its copy of the prefix's keys/values
    per_row = len(S) * p * model.cfg.d_model * 4 + cache_bytes_per_row(model, prefix)
    budget = max_bytes if max_bytes is not None else budget_bytes(dev)
    ex_step = max(1, min(b_all, budget // per_row))  # examples per forward when one circuit alone is too large
    out = torch.empty(k_all, b_all, device=dev)
    for e in range(0, b_all, ex_step):
        b = min(ex_step, b_all - e)
        # other_t [S, b*pos*d]: sender-major so a sender's slice of D is one contiguous block
        other_t = other[e:e + b].permute(2, 0, 1, 3).reshape(len(S), -1).float()
        k_step = max(1, budget // (per_row * b))
        past = prefix_cache(model, head[e:e + b]) if prefix else None  # once per example block
        for a in range(0, k_all, k_step):
            check_cancelled(should_cancel)
            k = len(masks[a:a + k_step])
            out[a:a + k, e:e + b] = _masked_chunk(model, base[e:e + b], other_t, masks[a:a + k], metric,
                                                  idx[e:e + b], S, R, None if past is None else repeat_cache(past, k))
    return out[inverse.to(dev)]


def _masked_chunk(model, base: Tensor, other_t: Tensor, masks: Tensor, metric: Metric, idx: Tensor,
                  S: list[Site], R: list[Site], past=None) -> Tensor:
    """One forward of k circuits x b examples (rows circuit-major), after the prefix in `past` (a frozen
    `core.prefix_cache` of k*b rows, or None): metric [k, b]."""
    k, (b, p) = masks.shape[0], base.shape
    d = model.cfg.d_model
    dev = base.device
    # D[c, s] = other_s - current_s of circuit c, flattened over (example, pos, d_model); zeros until computed.
    D = torch.zeros(k, len(S), b * p * d, device=dev)
    masks_t = masks.to(dev, torch.float32).transpose(1, 2)  # [k, R, S]

    def put(cols: list[int], cur: Tensor) -> None:
        """cur [k, len(cols), b*p*d]: the current run's values of senders `cols`."""
        D[:, cols] = other_t[cols] - cur.float()

    embed_i = next(i for i, s in enumerate(S) if s.kind == "embed")
    parts: dict[str, Tensor] = {}  # token and positional embedding: the embed sender is their sum
    n_parts = 2 if model.cfg.positional_embedding_type == "standard" else 1

    def on_embed_part(act, hook):
        parts[hook.name] = act
        if len(parts) == n_parts:
            put([embed_i], sum(parts.values()).reshape(k, 1, -1))
        return act

    def on_z(act, hook, cols, heads):
        w = head_writes(model, S[cols[0]].layer, act, heads)  # [k*b, p, h, d_model]
        put(cols, w.view(k, b, p, len(heads), -1).permute(0, 3, 1, 2, 4).reshape(k, len(heads), -1))
        return act

    def on_mlp(act, hook, i):
        put([i], act.reshape(k, 1, -1))
        return act

    # Receivers are read in stages: stage l holds layer l's q/k/v inputs and MLP input (and, in the last layer, the
    # logits input). The stage's share of the senders before layer l (prefix p0) is one matmul for all of its
    # receivers, run at its first hook: that matmul reads D once per layer, and its cost is reading D. What a
    # receiver sees beyond p0 (the MLP input: its layer's heads; logits: the last layer) is added at its own hook.
    stage_corr: dict[int, Tensor | None] = {}

    def stage(st):
        if st not in stage_corr:
            stage_corr.clear()  # earlier stages' receivers have all been read
            m = masks_t[:, stage_rows[st], :stage_p0[st]]
            stage_corr[st] = torch.matmul(m, D[:, :stage_p0[st]]) if bool(m.any()) else None
        return stage_corr[st]

    def on_receiver(act, hook, js, heads, n_up, st, off):
        corr = stage(st)
        corr = None if corr is None else corr[:, off:off + len(js)]
        p0 = stage_p0[st]
        if n_up > p0:
            m = masks_t[:, js, p0:n_up]
            if bool(m.any()):
                extra = torch.matmul(m, D[:, p0:n_up])
                corr = extra if corr is None else corr + extra
        if corr is None:
            return act
        corr = corr.reshape(k, len(js), b, p, d).permute(0, 2, 3, 1, 4).reshape(k * b, p, len(js), d)
        if heads is None:
            return (act + corr[:, :, 0]).to(act.dtype)
        return act.index_add(2, heads, corr.to(act.dtype))

    hooks = [("hook_embed", on_embed_part)]
    if n_parts == 2:
        hooks.append(("hook_pos_embed", on_embed_part))
    z_cols: dict[int, list[int]] = {}
    for i, s in enumerate(S):
        if s.kind == "z":
            z_cols.setdefault(s.layer, []).append(i)
        elif s.kind == "mlp_out":
            hooks.append((s.hook, lambda a, hook, i=i: on_mlp(a, hook, i)))
    for l, cols in z_cols.items():
        heads = [S[i].head for i in cols]
        hooks.append((S[cols[0]].hook, lambda a, hook, cols=cols, heads=heads: on_z(a, hook, cols, heads)))
    groups: dict[str, list[int]] = {}
    for j, r in enumerate(R):
        groups.setdefault(r.hook, []).append(j)
    rows: dict[int, list[int]] = {}
    stage_p0: dict[int, int] = {}
    for name, js in groups.items():
        r0 = R[js[0]]
        n_up = sum(1 for s in S if _order(s) < _order(r0))
        st = min(r0.layer, model.cfg.n_layers - 1)
        stage_p0[st] = sum(1 for s in S if _order(s) < (st, 0))
        off = len(rows.setdefault(st, []))
        rows[st] += js
        heads = torch.tensor([R[j].head for j in js], device=dev) if r0.kind in QKV else None
        hooks.append((name, lambda a, hook, js=js, heads=heads, n_up=n_up, st=st, off=off:
                      on_receiver(a, hook, js, heads, n_up, st, off)))
    stage_rows = {st: torch.tensor(js, device=dev) for st, js in rows.items()}
    # After the receivers of the last block's output: keep the last position only (the metric's).
    hooks.append((f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", lambda a, hook: a[:, -1:]))
    toks = base.repeat(k, 1)
    kw = {} if past is None else {"past_kv_cache": past, "attention_mask": torch.ones_like(toks)}
    with torch.no_grad():
        logits = model.run_with_hooks(toks, fwd_hooks=hooks, **kw)
    return final_metric(model, logits, metric, idx.repeat(k)).view(k, b)
