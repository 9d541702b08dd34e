"""Where a graph's feature nodes fire on a small corpus: each latent's top-activating contexts.

The windows run through the real model in batches (right-padded: the models are causal, so padding never reaches an
earlier position), only up to the deepest layer asked about; each transcoder reads its MLP's input through that
run's own norm scales, as the graph's `replacement.freeze` does on its prompt, so a latent's activation here is the
one its graph node would have on that text. The cost is about one forward of the corpus; the caller bounds it.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..core.progress import Progress, ShouldCancel, check_cancelled
from .replacement import frozen_norm, scale_hook, stream_hook, transcoder_input
from .transcoders import TracingTranscoder

BATCH_TOKENS = 4096  # padded tokens per forward: the cached streams and one layer's latents stay small


@dataclass(frozen=True)
class FeatureContext:
    """Latent fires with `activation` at token `position` of corpus window `window`."""

    window: int
    position: int
    activation: float


def _batches(windows: Sequence[Sequence[int]]) -> list[list[int]]:
    """Window indices in order, grouped so that each group's padded size stays within BATCH_TOKENS."""
    out: list[list[int]] = []
    longest = 0
    for w, window in enumerate(windows):
        n = max(len(window), 1)
        if out and max(longest, n) * (len(out[-1]) + 1) <= BATCH_TOKENS:
            out[-1].append(w)
            longest = max(longest, n)
        else:
            out.append([w])
            longest = n
    return out


@torch.no_grad()
def top_contexts(model, transcoders: Mapping[int, TracingTranscoder], windows: Sequence[Sequence[int]],
                 latents: Sequence[tuple[int, int]], n_top: int = 5, progress: Progress | None = None,
                 should_cancel: ShouldCancel | None = None) -> dict[tuple[int, int], list[FeatureContext]]:
    """(layer, latent) -> its n_top strongest (window, position, activation) over `windows` (token id lists), the
    strongest first; a latent that never fires gets []. Ties keep the earlier context (window, then position)."""
    if n_top < 1:
        raise ValueError("n_top: give a number >= 1")
    wanted = sorted(set((int(l), int(f)) for l, f in latents))
    for l, f in wanted:
        if l not in transcoders or not 0 <= f < transcoders[l].width:
            raise ValueError(f"latents: ({l}, {f}) is not a latent of the transcoders given")
    if not wanted:
        return {}
    by_layer: dict[int, list[int]] = {}
    for l, f in wanted:
        by_layer.setdefault(l, []).append(f)
    heaps: dict[tuple[int, int], list[tuple[float, int, int, int]]] = {k: [] for k in wanted}
    names = set()
    for l in by_layer:
        names.add(stream_hook(model, l))
        if transcoders[l].reads != "resid" and scale_hook(getattr(model.blocks[l], "ln2", None)):
            names.add(scale_hook(model.blocks[l].ln2))
    dev = model.cfg.device
    batches, done = _batches(windows), 0
    for group in batches:
        check_cancelled(should_cancel)
        longest = max(max(len(windows[w]), 1) for w in group)
        toks = torch.zeros(len(group), longest, dtype=torch.long)
        real = torch.zeros(len(group), longest, dtype=torch.bool)
        for i, w in enumerate(group):
            toks[i, :len(windows[w])] = torch.as_tensor(list(windows[w]), dtype=torch.long)
            real[i, :len(windows[w])] = True
        cache: dict[str, torch.Tensor] = {}

        def keep(act, hook):
            cache[hook.name] = act.detach()

        model.run_with_hooks(toks.to(dev), stop_at_layer=max(by_layer) + 1,
                             fwd_hooks=[(n, keep) for n in sorted(names)])
        real = real.to(dev)
        for l, fs in by_layer.items():
            tc = transcoders[l]
            ln2 = getattr(model.blocks[l], "ln2", None)
            norm = None if tc.reads == "resid" else frozen_norm(ln2, cache.get(scale_hook(ln2)))
            acts = tc.encode(transcoder_input(tc, norm, cache[stream_hook(model, l)].float()))[..., fs]
            acts = (acts * real[..., None]).reshape(-1, len(fs)).T.cpu()  # [latents, windows x positions]
            vals, idx = torch.sort(acts, dim=1, descending=True, stable=True)  # stable: earlier contexts first
            for j, f in enumerate(fs):
                heap = heaps[(l, f)]
                for v, i in zip(vals[j, :n_top].tolist(), idx[j, :n_top].tolist()):
                    if v <= 0:
                        break
                    w, p = group[i // longest], i % longest
                    entry = (v, -w, -p, w, p)
                    if len(heap) < n_top:
                        heapq.heappush(heap, entry)
                    elif entry > heap[0]:
                        heapq.heapreplace(heap, entry)
        done += len(group)
        if progress is not None:
            progress(done / max(len(windows), 1), f"top contexts: {done}/{len(windows)} windows")
    return {k: [FeatureContext(w, p, a) for a, _, _, w, p in sorted(h, reverse=True)] for k, h in heaps.items()}


def context_text(window: Sequence[int], position: int, token_str, before: int = 8, after: int = 2) -> str:
    """The text around `position` of a window, its token marked with guillemets: '...the «cat» sat'. token_str
    renders one token id."""
    lo, hi = max(0, position - before), min(len(window), position + after + 1)
    parts = [token_str(int(t)) for t in window[lo:hi]]
    parts[position - lo] = f"\u00ab{parts[position - lo]}\u00bb"
    return ("\u2026" if lo > 0 else "") + "".join(parts) + ("\u2026" if hi < len(window) else "")


__all__ = ["FeatureContext", "context_text", "top_contexts"]
