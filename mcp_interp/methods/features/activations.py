"""Activations at one site, from a forward pass that stops as soon as the site has been computed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core import Progress, ShouldCancel, Site, check_cancelled

FEATURE_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_post")


def check_feature_site(model, site: Site) -> None:
    """ValueError unless features can live at `site` (a whole-vector site of `model`)."""
    if site.kind not in FEATURE_KINDS:
        raise ValueError(f"site kind {site.kind!r}: features live at one of {FEATURE_KINDS}")
    site.check(model)


def stop_layer(model, site: Site) -> int | None:
    """The `stop_at_layer` that runs the model only up to (and including) the block holding `site`."""
    last = site.layer + 1
    return None if last >= model.cfg.n_layers else last


@dataclass
class Activations:
    """acts [n_tokens, d] at a site; seq [n_tokens] and pos [n_tokens] say where each row came from."""

    acts: torch.Tensor
    seq: torch.Tensor
    pos: torch.Tensor
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return len(self.acts) / max(self.seconds, 1e-9)


@torch.no_grad()
def site_activations(model, site: Site, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Activation at `site` for a batch of equal-length sequences `tokens` [b, T]: [b, T, d], or [b, d] at
    `positions` [b] (one index per row). Runs blocks 0..site.layer only."""
    store: dict[str, torch.Tensor] = {}

    def grab(act, hook):
        store["x"] = act.detach()

    model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=[(site.hook, grab)],
                         stop_at_layer=stop_layer(model, site), return_type=None)
    x = store["x"]
    if positions is not None:
        x = x[torch.arange(x.shape[0], device=x.device), positions.to(x.device)]
    return x


@torch.no_grad()
def collect_activations(model, site: Site, sequences: Sequence[Sequence[int]], batch_size: int = 16,
                        skip_first: int = 0, progress: Progress | None = None,
                        should_cancel: ShouldCancel | None = None, dtype=torch.float32) -> Activations:
    """Every token's activation at `site` over `sequences` (lists of token ids, any lengths; equal lengths are
    batched together), kept on the CPU. `skip_first` drops each sequence's first positions (e.g. the attention
    sink of a real model)."""
    return collect_site_activations(model, [site], sequences, batch_size, skip_first, progress, should_cancel,
                                    dtype)[0]


@torch.no_grad()
def collect_site_activations(model, sites: Sequence[Site], sequences: Sequence[Sequence[int]], batch_size: int = 16,
                             skip_first: int = 0, progress: Progress | None = None,
                             should_cancel: ShouldCancel | None = None, dtype=torch.float32,
                             transform: Callable[[Site, torch.Tensor], torch.Tensor] | None = None
                             ) -> list[Activations]:
    """`collect_activations` at several sites at once: one forward pass per batch, stopped after the deepest site,
    fills every site's rows (same `seq` / `pos` order in each). `transform(site, x)` maps a batch's activation
    [b, T, d] on the model's device before it is kept (e.g. the MLP's own normalisation of hook_mlp_in)."""
    import time

    t0 = time.time()
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(sequences):
        by_len.setdefault(len(s), []).append(i)
    batches = [(L, idx[j:j + batch_size]) for L, idx in sorted(by_len.items()) for j in range(0, len(idx), batch_size)]
    hooks = sorted({s.hook for s in sites})
    deepest = max(sites, key=lambda s: s.layer)
    acts: list[list[torch.Tensor]] = [[] for _ in sites]
    seqs, poss = [], []
    for b, (L, idx) in enumerate(batches):
        check_cancelled(should_cancel, "activation collection")
        store: dict[str, torch.Tensor] = {}

        def grab(act, hook):
            store[hook.name] = act.detach()

        model.run_with_hooks(torch.tensor([list(sequences[i]) for i in idx], device=model.cfg.device),
                             fwd_hooks=[(h, grab) for h in hooks], stop_at_layer=stop_layer(model, deepest),
                             return_type=None)
        for i, site in enumerate(sites):
            x = store[site.hook] if transform is None else transform(site, store[site.hook])
            x = x[:, skip_first:].to("cpu", dtype)
            acts[i].append(x.reshape(-1, x.shape[-1]))
        n_pos = max(L - skip_first, 0)
        seqs.append(torch.tensor(idx).repeat_interleave(n_pos))
        poss.append(torch.arange(skip_first, L).repeat(len(idx)))
        if progress is not None:
            progress((b + 1) / len(batches), f"activations: batch {b + 1}/{len(batches)}")
    seconds = time.time() - t0
    seq = torch.cat(seqs) if seqs else torch.zeros(0, dtype=torch.long)
    pos = torch.cat(poss) if poss else torch.zeros(0, dtype=torch.long)
    return [Activations(torch.cat(a) if a else torch.zeros(0, site.dim(model)), seq, pos, seconds)
            for a, site in zip(acts, sites)]


@torch.no_grad()
def activations_at(model, sites: Sequence[Site], sequences: Sequence[Sequence[int]], seq: Sequence[int],
                   pos: Sequence[int], batch_size: int = 16,
                   should_cancel: ShouldCancel | None = None) -> list[torch.Tensor]:
    """The activation at each of `sites` for rows (seq[r], pos[r]) (a token of one of `sequences`): one [rows, d]
    float32 CPU tensor per site, from one forward pass per batch of equal-length sequences that stops after the
    deepest site."""
    rows_of: dict[int, list[int]] = {}
    for r, s in enumerate(seq):
        rows_of.setdefault(int(s), []).append(r)
    out = [torch.zeros(len(seq), s.dim(model)) for s in sites]
    by_len: dict[int, list[int]] = {}
    for s in rows_of:
        by_len.setdefault(len(sequences[s]), []).append(s)
    deepest = max(sites, key=lambda s: s.layer)
    hooks = sorted({s.hook for s in sites})
    for L, idx in sorted(by_len.items()):
        for j in range(0, len(idx), batch_size):
            check_cancelled(should_cancel, "activations")
            ch = idx[j:j + batch_size]
            store: dict[str, torch.Tensor] = {}

            def grab(act, hook):
                store[hook.name] = act.detach()

            model.run_with_hooks(torch.tensor([list(sequences[s]) for s in ch], device=model.cfg.device),
                                 fwd_hooks=[(h, grab) for h in hooks], stop_at_layer=stop_layer(model, deepest),
                                 return_type=None)
            b = torch.tensor([k for k, s in enumerate(ch) for _ in rows_of[s]])
            rows = [r for s in ch for r in rows_of[s]]
            p = torch.tensor([int(pos[r]) for r in rows])
            for i, site in enumerate(sites):
                out[i][rows] = store[site.hook][b.to(store[site.hook].device), p.to(store[site.hook].device)].to(
                    "cpu", torch.float32)
    return out


__all__ = ["Activations", "FEATURE_KINDS", "activations_at", "check_feature_site", "collect_activations",
           "collect_site_activations", "site_activations",
           "stop_layer"]
