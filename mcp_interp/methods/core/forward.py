"""Forward passes that only need final-position logits, batched by prompt length."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from .metrics import final_normed


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
            logits = model.unembed(final_normed(model, resid))[:, 0]  # planted toys have no ln_final
            out[chunk] = logits.float().cpu()
            if progress:
                progress(len(chunk))
    return out
