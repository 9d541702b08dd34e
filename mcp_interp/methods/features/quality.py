"""How good is an SAE: reconstruction on held-out activations, sparsity, dead and dense latents, and what the
model loses when the reconstruction replaces the site (CE loss, KL, fraction of loss recovered vs zero-ablation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core import Progress, ShouldCancel, Site, check_cancelled
from ..core.footprint import F32
from .sae import encode


def evaluation_footprint(d_in: int, d_sae: int, rows: int, batch: int = 4096) -> float:
    """Peak host bytes of `reconstruction_stats` on `rows` collected activation rows of width `d_in`: the rows (the
    collected copy and its concatenation), one batch's latents and reconstruction, the firing counts."""
    return 2 * rows * d_in * F32 + 3 * min(batch, rows) * (d_sae + d_in) * F32 + 2 * d_sae * F32


@torch.no_grad()
def reconstruction_stats(sae, acts: torch.Tensor, dense_threshold: float = 0.1, batch: int = 4096) -> dict:
    """On rows `acts` [N, d]: explained variance (1 - SSE / total SS about the mean), MSE per element, L0 (mean
    active latents per row), dead latents (never active on these rows) and dense ones (active on more than
    `dense_threshold` of rows); `firing_rate` [d_sae] comes back as a tensor."""
    sse, l0, fires = 0.0, 0.0, torch.zeros(sae.cfg.d_sae)
    for j in range(0, len(acts), batch):
        x = acts[j:j + batch]
        f = encode(sae, x)
        r = sae.decode(f).to("cpu", x.dtype)
        sse += float(((x - r) ** 2).sum())
        active = (f != 0).float().cpu()
        l0 += float(active.sum())
        fires += active.sum(0)
    n = len(acts)
    var = float(((acts - acts.mean(0)) ** 2).sum())
    rate = fires / max(n, 1)
    return {"explained_variance": 1 - sse / var if var > 0 else float("nan"), "mse": sse / max(acts.numel(), 1),
            "l0": l0 / max(n, 1), "dead": int((fires == 0).sum()), "dense": int((rate > dense_threshold).sum()),
            "dense_threshold": dense_threshold, "n_rows": n, "d_sae": int(sae.cfg.d_sae), "firing_rate": rate}


@torch.no_grad()
def loss_with_hooks(model, sequences: Sequence[Sequence[int]], replaced: list, ablated: list, batch_size: int = 8,
                    progress: Progress | None = None, should_cancel: ShouldCancel | None = None,
                    label: str = "loss") -> dict:
    """Next-token cross-entropy over `sequences` (grouped by length into batches) with the model untouched, with the
    `replaced` hooks (a reconstruction spliced in) and with the `ablated` ones (zero-ablation); KL(clean || each) per
    token; fraction of loss recovered (CE_zero - CE_replaced) / (CE_zero - CE_clean), 1 = nothing lost. The one loop
    SAE and transcoder quality share."""
    tot = {"clean": 0.0, "replaced": 0.0, "zero": 0.0, "kl": 0.0, "kl_zero": 0.0}
    n_tok = 0
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(sequences):
        if len(s) >= 2:
            by_len.setdefault(len(s), []).append(i)
    batches = [idx[j:j + batch_size] for _, idx in sorted(by_len.items()) for j in range(0, len(idx), batch_size)]
    for b, idx in enumerate(batches):
        check_cancelled(should_cancel, label)
        toks = torch.tensor([list(sequences[i]) for i in idx], device=model.cfg.device)
        tgt = toks[:, 1:]
        lp = {}
        for name, hooks in (("clean", []), ("replaced", replaced), ("zero", ablated)):
            lp[name] = model.run_with_hooks(toks, fwd_hooks=hooks)[:, :-1].float().log_softmax(-1)
            tot[name] += float(-lp[name].gather(-1, tgt[..., None]).sum())
        p = lp["clean"].exp()
        tot["kl"] += float((p * (lp["clean"] - lp["replaced"])).sum())
        tot["kl_zero"] += float((p * (lp["clean"] - lp["zero"])).sum())
        n_tok += tgt.numel()
        if progress is not None:
            progress((b + 1) / len(batches), f"{label}: batch {b + 1}/{len(batches)}")
    out = {k: v / max(n_tok, 1) for k, v in tot.items()}
    gap = out["zero"] - out["clean"]
    out["fraction_loss_recovered"] = (out["zero"] - out["replaced"]) / gap if abs(gap) > 1e-9 else float("nan")
    out["n_tokens"] = n_tok
    return out


def spliced_loss(model, sae, site: Site, sequences: Sequence[Sequence[int]], batch_size: int = 8,
                 progress: Progress | None = None, should_cancel: ShouldCancel | None = None,
                 max_norm: float | None = None) -> dict:
    """Next-token cross-entropy over `sequences` with the site untouched, replaced by the SAE's reconstruction,
    and zero-ablated; KL(clean || spliced) per token; fraction of loss recovered
    (CE_zero - CE_spliced) / (CE_zero - CE_clean) (1 = the reconstruction loses nothing). `max_norm`: positions
    whose activation norm exceeds it (massive-activation tokens the SAE was not trained on) keep their clean
    activation; how many is `n_passed_through`."""
    passed = [0]

    def splice(act, hook):
        rec = sae.decode(sae.encode(act.to(sae.dtype))).to(act.dtype)
        if max_norm is None:
            return rec
        keep = act.norm(dim=-1, keepdim=True) > max_norm
        passed[0] += int(keep.sum())
        return torch.where(keep, act, rec)

    def zero(act, hook):
        return torch.zeros_like(act)

    out = loss_with_hooks(model, sequences, [(site.hook, splice)], [(site.hook, zero)], batch_size, progress,
                          should_cancel, "spliced loss")
    return {"ce_clean": out["clean"], "ce_spliced": out["replaced"], "ce_zero_ablation": out["zero"],
            "kl_spliced": out["kl"], "kl_zero_ablation": out["kl_zero"],
            "fraction_loss_recovered": out["fraction_loss_recovered"], "n_tokens": out["n_tokens"],
            "n_passed_through": passed[0]}


def match_directions(decoder: torch.Tensor, truth: torch.Tensor) -> dict:
    """How well decoder rows [d_sae, d] recover known unit directions `truth` [m, d]: for each true direction the
    max |cos| over decoder rows (and which row), and their mean."""
    dec = torch.nn.functional.normalize(decoder.float(), dim=-1)
    tr = torch.nn.functional.normalize(truth.float(), dim=-1)
    cos = (tr @ dec.T).abs()
    best, idx = cos.max(-1)
    return {"mean_max_abs_cos": float(best.mean()), "min_max_abs_cos": float(best.min()),
            "max_abs_cos": best.tolist(), "best_latent": idx.tolist()}


__all__ = ["match_directions", "reconstruction_stats", "spliced_loss"]
