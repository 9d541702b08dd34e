"""Where a graph's feature nodes fire on a small corpus: each latent's top-activating contexts.

Each corpus window runs through the real model once (`replacement.freeze`, the same read as the graph's: the
transcoder's encoder on its input with the norms of that run), so a latent's activation here is the one its graph
node would have on that text. The cost is one forward per window; the caller bounds the windows.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..core.progress import Progress, ShouldCancel, check_cancelled
from .replacement import freeze
from .transcoders import TracingTranscoder


@dataclass(frozen=True)
class FeatureContext:
    """Latent fires with `activation` at token `position` of corpus window `window`."""

    window: int
    position: int
    activation: float


@torch.no_grad()
def top_contexts(model, transcoders: Mapping[int, TracingTranscoder], windows: Sequence[Sequence[int]],
                 latents: Sequence[tuple[int, int]], n_top: int = 5, progress: Progress | None = None,
                 should_cancel: ShouldCancel | None = None) -> dict[tuple[int, int], list[FeatureContext]]:
    """(layer, latent) -> its n_top strongest (window, position, activation) over `windows` (token id lists), the
    strongest first; a latent that never fires gets []. Ties keep the earlier context."""
    if n_top < 1:
        raise ValueError("n_top: give a number >= 1")
    wanted = sorted(set((int(l), int(f)) for l, f in latents))
    for l, f in wanted:
        if l not in transcoders or not 0 <= f < transcoders[l].width:
            raise ValueError(f"latents: ({l}, {f}) is not a latent of the transcoders given")
    heaps: dict[tuple[int, int], list[tuple[float, int, int, int]]] = {k: [] for k in wanted}
    if not wanted:
        return {}
    width = max(t.width for t in transcoders.values())
    keys = torch.tensor([l * width + f for l, f in wanted])
    seen = 0
    for w, window in enumerate(windows):
        check_cancelled(should_cancel)
        run = freeze(model, torch.as_tensor(list(window), dtype=torch.long), transcoders)
        feats = run.features.cpu()
        hit = torch.isin(feats[:, 0] * width + feats[:, 2], keys).nonzero().flatten()
        acts = run.activations.cpu()
        for i in hit.tolist():
            l, p, f = (int(v) for v in feats[i])
            entry = (float(acts[i]), -seen, w, p)  # -seen: among equal activations the earlier context wins
            heap = heaps[(l, f)]
            if len(heap) < n_top:
                heapq.heappush(heap, entry)
            elif entry > heap[0]:
                heapq.heapreplace(heap, entry)
            seen += 1
        if progress is not None:
            progress((w + 1) / max(len(windows), 1), f"top contexts: {w + 1}/{len(windows)} windows")
    return {k: [FeatureContext(w, p, a) for a, _, w, p in sorted(h, reverse=True)] for k, h in heaps.items()}


def context_text(window: Sequence[int], position: int, token_str, before: int = 8, after: int = 2) -> str:
    """The text around `position` of a window, its token marked with guillemets: '...the «cat» sat'. token_str
    renders one token id."""
    lo, hi = max(0, position - before), min(len(window), position + after + 1)
    parts = [token_str(int(t)) for t in window[lo:hi]]
    parts[position - lo] = f"\u00ab{parts[position - lo]}\u00bb"
    return ("\u2026" if lo > 0 else "") + "".join(parts) + ("\u2026" if hi < len(window) else "")


__all__ = ["FeatureContext", "context_text", "top_contexts"]
