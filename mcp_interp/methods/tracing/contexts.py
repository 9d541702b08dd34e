"""Where a graph's feature nodes fire on a small corpus: each latent's top-activating contexts.

The windows run through the real model in batches (right-padded: the models are causal, so padding never reaches an
earlier position), only up to the deepest layer asked about; each transcoder is encoded inside the forward, on its
MLP's input as that run's own norm gives it (what the graph's `replacement.freeze` reads on its prompt, so a
latent's activation here is the one its graph node would have on that text), and only the wanted latents'
activations are kept. The cost is about one forward of the corpus; the caller bounds it.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from ..core.progress import Progress, ShouldCancel, check_cancelled
from .replacement import scale_hook, stream_hook
from .transcoders import TracingTranscoder

BATCH_TOKENS = 4096  # padded tokens per forward at most
BATCH_MB = 256.0  # ... and fewer for wide transcoders: one layer's latents [tokens, width] (x3 in TopK) within this


@dataclass(frozen=True)
class FeatureContext:
    """Latent fires with `activation` at token `position` of corpus window `window`."""

    window: int
    position: int
    activation: float


def _batches(windows: Sequence[Sequence[int]], limit: int | None = None) -> list[list[int]]:
    """Window indices in order, grouped so that each group's padded size stays within `limit` tokens (default
    BATCH_TOKENS); a window longer than that is a group of its own."""
    limit = BATCH_TOKENS if limit is None else limit
    out: list[list[int]] = []
    longest = 0
    for w, window in enumerate(windows):
        n = max(len(window), 1)
        if out and max(longest, n) * (len(out[-1]) + 1) <= limit:
            out[-1].append(w)
            longest = max(longest, n)
        else:
            out.append([w])
            longest = n
    return out


def _reader(model, layer: int, tc: TracingTranscoder):
    """(hook, read): where transcoder `tc` of MLP `layer` finds its input in a forward, and how it reads it there —
    the stream itself, or ln2's normalised output (before its weight; times weight plus bias for the MLP module's
    input), so nothing but the wanted latents' activations is kept from a batch."""
    ln2 = getattr(model.blocks[layer], "ln2", None)
    if tc.reads == "resid" or scale_hook(ln2) is None:
        return stream_hook(model, layer), lambda x: x
    w, b = getattr(ln2, "w", None), getattr(ln2, "b", None)
    if tc.reads == "normalized" or (w is None and b is None):
        return f"blocks.{layer}.ln2.hook_normalized", lambda x: x
    return f"blocks.{layer}.ln2.hook_normalized", lambda x: x * w.float() + (0.0 if b is None else b.float())


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
    dev = model.cfg.device
    width = max(transcoders[l].width for l in by_layer)
    batches, done = _batches(windows, max(1, min(BATCH_TOKENS, int(BATCH_MB * 2**20) // (12 * width)))), 0
    for group in batches:
        check_cancelled(should_cancel)
        longest = max(max(len(windows[w]), 1) for w in group)
        toks = torch.zeros(len(group), longest, dtype=torch.long)
        real = torch.zeros(len(group), longest, dtype=torch.bool)
        for i, w in enumerate(group):
            toks[i, :len(windows[w])] = torch.as_tensor(list(windows[w]), dtype=torch.long)
            real[i, :len(windows[w])] = True
        real = real.to(dev)
        acts: dict[int, torch.Tensor] = {}  # layer -> [latents, windows x positions]: only the wanted latents kept

        def encode(act, hook, l: int, read):
            a = transcoders[l].encode(read(act.float()))[..., by_layer[l]] * real[..., None]
            acts[l] = a.reshape(-1, len(by_layer[l])).T.cpu()

        hooks = [(name, partial(encode, l=l, read=read)) for l in by_layer
                 for name, read in [_reader(model, l, transcoders[l])]]
        model.run_with_hooks(toks.to(dev), stop_at_layer=max(by_layer) + 1, fwd_hooks=hooks)
        for l, fs in by_layer.items():
            vals, idx = torch.sort(acts[l], dim=1, descending=True, stable=True)  # stable: earlier contexts first
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
