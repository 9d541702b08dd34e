"""Forward passes that only need final-position logits, batched by prompt length, and the shared-prefix cache
that lets a forward run only the tokens where two inputs differ."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from .metrics import full_logits


def group_by_length(token_lists: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    """Example indices grouped by token length (no padding needed inside a group)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, toks in enumerate(token_lists):
        groups[len(toks)].append(i)
    return dict(groups)


@torch.inference_mode()
def final_logits(model, token_lists: Sequence[Sequence[int]], batch_size: int = 32,
                 progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Logits at the last token of every prompt: [n, d_vocab], float32 on CPU."""
    device = model.cfg.device
    out = torch.empty(len(token_lists), model.cfg.d_vocab)
    for _, idx in sorted(group_by_length(token_lists).items()):
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            toks = torch.tensor([list(token_lists[i]) for i in chunk], device=device)
            # Only the final position is unembedded: stop at the residual stream, then unembed one row.
            resid = model(toks, return_type=None, stop_at_layer=model.cfg.n_layers)[:, -1:]
            logits = full_logits(model, resid[:, 0])  # the model's own output: its soft cap (Gemma 2) applied
            out[chunk] = logits.float().cpu()
            if progress:
                progress(len(chunk))
    return out


def last_position_hook(model):
    """(hook name, hook) cutting the residual stream to its last position after the final block, for forwards whose
    metric reads only the final logits: the unembedding then runs on one row per prompt instead of every position
    (Gemma's 262k-token vocabulary made it two thirds of a forward). Add it after any hook on the same point."""
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", lambda act, hook: act[:, -1:]


def shared_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens the token batches a and b [batch, T] share in every row (T if they are equal):
    before that token both runs compute the same activations (causal attention)."""
    same = (a == b).all(0)
    return int(same.int().argmin()) if not bool(same.all()) else a.shape[1]


def prefix_reusable(model) -> bool:
    """Whether a prefix's keys/values are what the full sequence computes there: not with dynamic NTK rotary
    scaling, whose frequencies depend on the whole sequence's length."""
    return not getattr(model.cfg, "use_dynamic_ntk_rope", False)


@torch.no_grad()
def prefix_cache(model, tokens: torch.Tensor, repeat: int = 1) -> TransformerLensKeyValueCache:
    """The frozen keys/values of tokens [b, p] (a prefix every later run shares) for a forward of the rest:
    `model.run_with_hooks(rest, past_kv_cache=cache, attention_mask=torch.ones_like(rest))` then equals the
    full forward at the rest's tokens. repeat: as `repeat_cache`."""
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(tokens))
    model(tokens, return_type=None, past_kv_cache=cache, attention_mask=torch.ones_like(tokens))
    cache.freeze()
    return repeat_cache(cache, repeat) if repeat > 1 else cache


def repeat_cache(cache: TransformerLensKeyValueCache, repeat: int) -> TransformerLensKeyValueCache:
    """A frozen copy of a prefix cache of b rows with its rows repeated block-major (copy r of row i is row r*b + i),
    for a batch of `repeat` variants of the b examples."""
    out = TransformerLensKeyValueCache(
        [TransformerLensKeyValueCacheEntry(e.past_keys.repeat(repeat, 1, 1, 1), e.past_values.repeat(repeat, 1, 1, 1))
         for e in cache.entries], cache.previous_attention_mask.repeat(repeat, 1))
    out.freeze()
    return out


def memory_budget(device, cpu_bytes: int, cuda_cap_bytes: int) -> int:
    """Bytes a batched method may hold on `device`: `cpu_bytes` on a CPU; on CUDA a quarter of the free memory, at
    most `cuda_cap_bytes`."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(min(torch.cuda.mem_get_info(dev)[0] // 4, cuda_cap_bytes))
    return cpu_bytes


def cache_bytes_per_row(model, prefix: int) -> int:
    """Memory one row of a prefix cache of `prefix` tokens holds (keys and values of every layer)."""
    cfg = model.cfg
    return 2 * cfg.n_layers * prefix * (cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head * 4
