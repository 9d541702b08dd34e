"""The tuned lens (Belrose et al. 2023): one affine translator per lens point, A_l r + b_l, initialised at the
identity (so an untrained tuned lens is the logit lens) and trained, model frozen, to minimise
KL(p_final || p_translated) at every token of a text corpus, where p_final is the model's own next-token
distribution and p_translated = softmax(unembed(ln_final(A_l r + b_l))). The last point (the final stream) keeps
the identity: its logit lens already is the model.

Windows are split into train and held-out windows (no window in both); the held-out KL per point of the logit lens
(identity) and of the tuned lens is what `TunedLens` reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.footprint import F32
from ..core.forward import group_by_length
from ..core.metrics import full_logits
from ..core.progress import Progress
from ..core.sites import Site


@dataclass
class TunedSpec:
    """How to train a tuned lens (see `train_tuned_lens`): corpus windows (token id lists) and the training
    settings."""

    windows: Sequence[Sequence[int]]
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 64
    held_out: float = 0.2
    seed: int = 0


@dataclass
class TunedLens:
    """Translators per point: `delta[l]` = A_l - I [d, d] and `bias[l]` [d]; held-out KL (nats per token) per point
    of the logit lens and the tuned lens; training details."""

    points: list[int]
    delta: dict[int, torch.Tensor]
    bias: dict[int, torch.Tensor]
    kl_logit: dict[int, float]
    kl_tuned: dict[int, float]
    train_tokens: int
    held_out_tokens: int
    steps: int
    curve: list[float] = field(default_factory=list)  # mean training KL over points, per step

    def tensors(self) -> dict[str, torch.Tensor]:
        """For safetensors: A.{l} (the full matrix A_l) and b.{l} per point."""
        out = {}
        for p in self.points:
            d = self.delta[p]
            out[f"A.{p}"] = (torch.eye(d.shape[0]) + d.float().cpu()).contiguous()
            out[f"b.{p}"] = self.bias[p].float().cpu().contiguous()
        return out


def apply_translator(tuned: TunedLens, point: int, resid: torch.Tensor) -> torch.Tensor:
    """A_l r + b_l for residuals [rows, d] at `point` (the identity where the lens has no translator)."""
    if point not in tuned.delta:
        return resid
    d, b = tuned.delta[point].to(resid.device, resid.dtype), tuned.bias[point].to(resid.device, resid.dtype)
    return resid + resid @ d.T + b


def tuned_footprint(d_model: int, d_vocab: int, points: int, tokens: int, batch_size: int) -> float:
    """Peak bytes of `train_tuned_lens`: the residuals of every token at every point and the final stream, the
    translators with their gradients and Adam moments, one point's batch of logits through its backward."""
    return (F32 * tokens * (points + 1) * d_model + 4 * F32 * points * (d_model * d_model + d_model)
            + 6 * F32 * batch_size * d_vocab)


@torch.no_grad()
def _collect(model, windows: Sequence[Sequence[int]], hooks: list[str], batch: int = 16) -> list[torch.Tensor]:
    """Residuals [tokens, d] at each hook, every position of every window, in window order."""
    out: list[list[torch.Tensor | None]] = [[None] * len(windows) for _ in hooks]
    wanted = set(hooks)
    for _, idx in group_by_length(windows).items():
        for start in range(0, len(idx), batch):
            chunk = idx[start:start + batch]
            toks = torch.tensor([list(windows[i]) for i in chunk], device=model.cfg.device)
            _, cache = model.run_with_cache(toks, names_filter=lambda n: n in wanted, return_type=None)
            for h, hook in enumerate(hooks):
                for j, i in enumerate(chunk):
                    out[h][i] = cache[hook][j].float().cpu()
    return [torch.cat(o) for o in out]


def _logits(model, resid: torch.Tensor) -> torch.Tensor:
    """Lens logits (float32) of float32 residuals, through the model in its own dtype."""
    return full_logits(model, resid.to(model.cfg.dtype)).float()


def _kl(model, resid: torch.Tensor, target_logp: torch.Tensor) -> torch.Tensor:
    """KL(target || lens) per row, nats."""
    logp = torch.log_softmax(_logits(model, resid), -1)
    return (target_logp.exp() * (target_logp - logp)).sum(-1)


def _held_out_kl(model, resid: torch.Tensor, final: torch.Tensor, delta, bias, batch: int) -> tuple[float, float]:
    total_logit = total_tuned = 0.0
    with torch.no_grad():
        for s in range(0, len(resid), batch):
            r, f = resid[s:s + batch], final[s:s + batch]
            target = torch.log_softmax(_logits(model, f), -1)
            total_logit += float(_kl(model, r, target).sum())
            total_tuned += float(_kl(model, r + r @ delta.T + bias, target).sum())
    return total_logit / len(resid), total_tuned / len(resid)


def train_tuned_lens(model, windows: Sequence[Sequence[int]], points: Sequence[int], steps: int = 200,
                     lr: float = 1e-3, batch_size: int = 64, held_out: float = 0.2, seed: int = 0,
                     progress: Progress | None = None) -> TunedLens:
    """Train one translator per point of `points` below n_layers on the corpus `windows` (token id lists); see the
    module docstring. ValueError when there are too few windows to hold some out."""
    L = model.cfg.n_layers
    points = sorted({int(p) for p in points if 0 <= int(p) < L})
    if len(windows) < 2:
        raise ValueError(f"the tuned lens needs at least 2 corpus windows (one held out), got {len(windows)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(windows))
    n_test = min(len(windows) - 1, max(1, round(held_out * len(windows))))
    test_w = [windows[i] for i in sorted(order[:n_test])]
    train_w = [windows[i] for i in sorted(order[n_test:])]
    hooks = [Site("resid_pre", p).hook for p in points] + [Site("resid_post", L - 1).hook]
    if progress:
        progress(0.0, f"collecting residuals on {len(windows)} windows")
    train = _collect(model, train_w, hooks)
    test = _collect(model, test_w, hooks)
    final_tr, final_te = train[-1], test[-1]
    d = model.cfg.d_model
    gen = torch.Generator().manual_seed(seed)
    delta = {p: torch.zeros(d, d, requires_grad=True) for p in points}
    bias = {p: torch.zeros(d, requires_grad=True) for p in points}
    params = [*delta.values(), *bias.values()]
    opt = torch.optim.Adam(params, lr=lr) if params else None
    curve: list[float] = []
    n_tr = len(final_tr)
    for step in range(steps if params else 0):
        idx = torch.randint(0, n_tr, (min(batch_size, n_tr),), generator=gen)
        with torch.no_grad():
            target = torch.log_softmax(_logits(model, final_tr[idx]), -1)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for h, p in enumerate(points):  # one point's graph at a time: memory of one batch of logits
            r = train[h][idx]
            loss = _kl(model, r + r @ delta[p].T + bias[p], target).mean()
            loss.backward(inputs=[delta[p], bias[p]])  # the model stays frozen: no gradient reaches its weights
            total += float(loss.detach())
        opt.step()
        curve.append(total / len(points))
        if progress and (step % 10 == 0 or step == steps - 1):
            progress(0.1 + 0.8 * (step + 1) / steps, f"tuned lens step {step + 1}/{steps}: KL {curve[-1]:.4f}")
    kl_logit, kl_tuned = {}, {}
    for h, p in enumerate(points):
        kl_logit[p], kl_tuned[p] = _held_out_kl(model, test[h], final_te, delta[p].detach(), bias[p].detach(),
                                                max(256, batch_size))
    return TunedLens(points, {p: t.detach() for p, t in delta.items()}, {p: t.detach() for p, t in bias.items()},
                     kl_logit, kl_tuned, train_tokens=n_tr, held_out_tokens=len(final_te), steps=steps if params else 0,
                     curve=curve)
