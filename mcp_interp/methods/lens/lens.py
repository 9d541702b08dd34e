"""The logit lens: what each layer's residual stream would predict if it were the last.

Point l of a model with L blocks is the residual stream entering block l (`blocks.l.hook_resid_pre`) for
l < L, and point L is the stream leaving the last block (`blocks.{L-1}.hook_resid_post`), so point L's lens is the
model's own logits. A point's residual r is read as the model reads its final stream: logits =
unembed(ln_final(r)), the final norm's scale computed from r itself (nostalgebraist's logit lens; the final norm is
not frozen from the last layer's stream). With a tuned lens (`tuned.py`) r is first mapped by the point's affine
translator A_l r + b_l.

Per point, named position and prompt: the answer's probability, its rank (1 = top-1; tokens tied with the answer
count against it, so an all-equal row ranks the answer last, not first) and the task metric (a
`methods.core` Metric read at that position as if it were the last). At END the top tokens by mean probability over
prompts. `LensResult.first_layer`: the first point at which the answer is top-1 at END for at least half the prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.footprint import F32, F64, batch_forward_footprint
from ..core.forward import group_by_length
from ..core.metrics import Metric, full_logits
from ..core.progress import Progress, span
from ..core.sites import Site
from ..core.stats import ci_dict
from .tuned import TunedLens, TunedSpec, apply_translator, train_tuned_lens

TOP1_SHARE = 0.5  # first_layer: the answer is top-1 at END for at least this share of prompts


def point_hook(model, point: int) -> str:
    """The hook of lens point `point` (0..n_layers; see the module docstring)."""
    L = model.cfg.n_layers
    if not 0 <= point <= L:
        raise ValueError(f"lens point {point} is not in 0..{L} (point {L} is the last block's resid_post)")
    return Site("resid_pre", point).hook if point < L else Site("resid_post", L - 1).hook


def point_label(model, point: int) -> str:
    """Short label: 'L3 pre' for resid_pre 3, 'L11 post' for the last block's resid_post."""
    L = model.cfg.n_layers
    return f"L{point} pre" if point < L else f"L{L - 1} post"


@dataclass
class LensInputs:
    """tokens[i]: prompt i; positions [n, P]: token index of each named position in each prompt (-1: the position
    does not occur in that prompt; END is the last token); answer [n] token ids (None: no answer, top tokens only);
    metric: a methods.core Metric over the n prompts (None: none)."""

    tokens: Sequence[Sequence[int]]
    positions: np.ndarray
    position_names: list[str]
    answer: Sequence[int] | None = None
    metric: Metric | None = None

    def __post_init__(self):
        self.positions = np.asarray(self.positions, dtype=np.int64).reshape(len(self.tokens), -1)
        if self.positions.shape[1] != len(self.position_names):
            raise ValueError(f"positions has {self.positions.shape[1]} columns for {len(self.position_names)} names")
        if "END" not in self.position_names:
            raise ValueError("position_names must include 'END' (the last token)")
        if self.answer is not None and len(self.answer) != len(self.tokens):
            raise ValueError(f"{len(self.answer)} answers for {len(self.tokens)} prompts")


@dataclass
class LensResult:
    """Arrays are [points, positions, prompts] (NaN where a position does not occur in a prompt); `top_ids` /
    `top_probs` [points, k]: the tokens of highest mean probability at END over prompts; `end_top` [points, n]:
    each prompt's top-1 token at END and `end_top_prob` its probability."""

    points: list[int]
    hooks: list[str]
    labels: list[str]
    position_names: list[str]
    prob: np.ndarray | None
    rank: np.ndarray | None
    metric: np.ndarray | None
    metric_name: str | None
    top_ids: np.ndarray
    top_probs: np.ndarray
    end_top: np.ndarray
    end_top_prob: np.ndarray
    lens: str = "logit"
    tuned: TunedLens | None = None
    cost: dict = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.position_names.index("END")

    def top1_share(self) -> np.ndarray | None:
        """[points]: share of prompts whose answer is top-1 at END."""
        return None if self.rank is None else (self.rank[:, self.end] == 1).mean(-1)

    @property
    def first_layer(self) -> int | None:
        """The first point whose top-1 share at END is at least TOP1_SHARE (None if none, or no answer)."""
        share = self.top1_share()
        if share is None:
            return None
        hit = np.flatnonzero(share >= TOP1_SHARE)
        return int(self.points[hit[0]]) if hit.size else None

    def cell_means(self, name: str) -> np.ndarray:
        """[points, positions]: the mean of column `name` over the prompts where the position occurs (NaN if none)."""
        arr = getattr(self, name)
        ok = np.isfinite(arr)
        return np.where(ok.any(-1), np.where(ok, arr, 0).sum(-1) / np.maximum(ok.sum(-1), 1), np.nan)

    def cell_stats(self, name: str, seed: int = 0) -> list[list[dict | None]]:
        """[points][positions] of {"mean", "ci95", "n"} of column `name` (prob, rank, metric) over the prompts where
        the position occurs (bootstrap over prompts); None where it occurs in none."""
        arr = getattr(self, name)
        out = []
        for p in range(len(self.points)):
            row = []
            for q in range(len(self.position_names)):
                v = arr[p, q][np.isfinite(arr[p, q])]
                row.append(ci_dict(v, seed=seed) if v.size else None)
            out.append(row)
        return out


def lens_footprint(cfg, n: int, seq: int, points: int, positions: int, batch: int = 16) -> float:
    """Peak bytes of `logit_lens` (without training a tuned lens) on n prompts of up to `seq` tokens: one batch's
    forward (residual stream, MLP activations, one layer's attention scores) with the cached stream at every point,
    one point's lens logits and probabilities, the END probability sums and the [points, positions, n] results."""
    b = min(batch, n)
    forward = batch_forward_footprint(cfg, b, seq)
    read = 3 * b * positions * cfg.d_vocab_out * F32 + points * cfg.d_vocab_out * F64
    return forward + b * seq * points * cfg.d_model * F32 + read + 3 * points * positions * n * F64


@torch.inference_mode()
def _logits_at(model, resid: torch.Tensor, point: int, tuned: TunedLens | None) -> torch.Tensor:
    """Lens logits of residuals [rows, d_model] at `point` (float32)."""
    if tuned is not None:
        resid = apply_translator(tuned, point, resid)
    return full_logits(model, resid).float()


def _rank(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """1 + the number of other tokens whose logit is >= the answer's (ties count against the answer)."""
    own = logits.gather(1, ids[:, None])
    return (logits >= own).sum(-1)


def logit_lens(model, inputs: LensInputs, points: Sequence[int] | None = None, top_k: int = 10,
               tuned: TunedLens | TunedSpec | None = None, batch_size: int = 16,
               progress: Progress | None = None) -> LensResult:
    """The lens at `points` (default: every point 0..n_layers) for every prompt and named position of `inputs`;
    `tuned`: read through a tuned lens's translators instead of the identity (a `TunedSpec`: train it first, on its
    corpus windows, for these points). See the module docstring."""
    L = model.cfg.n_layers
    points = list(range(L + 1)) if points is None else sorted(set(int(p) for p in points))
    if isinstance(tuned, TunedSpec):
        with torch.inference_mode(False):
            tuned = train_tuned_lens(model, tuned.windows, points, steps=tuned.steps, lr=tuned.lr,
                                     batch_size=tuned.batch_size, held_out=tuned.held_out, seed=tuned.seed,
                                     progress=span(progress, 0.0, 0.8))
        progress = span(progress, 0.8, 1.0)
    with torch.inference_mode():
        return _read(model, inputs, points, top_k, tuned, batch_size, progress)


def _read(model, inputs: LensInputs, points: list[int], top_k: int, tuned: TunedLens | None, batch_size: int,
          progress: Progress | None) -> LensResult:
    hooks = [point_hook(model, p) for p in points]
    n, P, K = len(inputs.tokens), len(inputs.position_names), len(points)
    if n == 0:
        raise ValueError("logit_lens needs at least one prompt")
    k = max(1, min(int(top_k), model.cfg.d_vocab_out))
    has_answer = inputs.answer is not None
    answer = torch.as_tensor(list(inputs.answer) if has_answer else [0] * n, dtype=torch.long)
    shape = (K, P, n)
    prob, rank, metric = (np.full(shape, np.nan) for _ in range(3))
    prob_sum = torch.zeros(K, model.cfg.d_vocab_out, dtype=torch.float64)
    end_top = np.zeros((K, n), dtype=np.int64)
    end_top_prob = np.zeros((K, n))
    end_col = inputs.position_names.index("END")
    wanted = set(hooks)
    done = 0
    for _, idx in sorted(group_by_length(inputs.tokens).items()):
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            toks = torch.tensor([list(inputs.tokens[i]) for i in chunk], device=model.cfg.device)
            _, cache = model.run_with_cache(toks, names_filter=lambda name: name in wanted, return_type=None)
            rows_ex, rows_pos, rows_tok, cols = [], [], [], []
            for j, i in enumerate(chunk):
                for q in range(P):
                    t = int(inputs.positions[i, q])
                    if 0 <= t < toks.shape[1]:
                        rows_ex.append(i)
                        rows_pos.append(j)
                        rows_tok.append(t)
                        cols.append(q)
            ex = torch.tensor(rows_ex, dtype=torch.long)
            for a, hook in enumerate(hooks):
                resid = cache[hook][rows_pos, rows_tok]  # [rows, d_model]
                logits = _logits_at(model, resid, points[a], tuned)
                probs = logits.softmax(-1)
                if has_answer:
                    ids = answer[ex].to(logits.device)
                    prob[a, cols, rows_ex] = probs.gather(1, ids[:, None])[:, 0].double().cpu().numpy()
                    rank[a, cols, rows_ex] = _rank(logits, ids).double().cpu().numpy()
                if inputs.metric is not None:
                    metric[a, cols, rows_ex] = inputs.metric.from_logits(model, logits, ex).cpu().numpy()
                at_end = torch.tensor([c == end_col for c in cols])
                pe = probs[at_end.to(probs.device)].double().cpu()
                ends = [i for i, c in zip(rows_ex, cols) if c == end_col]
                prob_sum[a] += pe.sum(0)
                best = pe.max(-1)
                end_top[a, ends] = best.indices.numpy()
                end_top_prob[a, ends] = best.values.numpy()
            del cache
            done += len(chunk)
            if progress:
                progress(done / n, f"lens on {done}/{n} prompts")
    mean_prob = prob_sum / n
    top = mean_prob.topk(k, dim=-1)
    return LensResult(points, hooks, [point_label(model, p) for p in points], list(inputs.position_names),
                      prob if has_answer else None, rank if has_answer else None,
                      metric if inputs.metric is not None else None, getattr(inputs.metric, "name", None),
                      top.indices.numpy(), top.values.float().numpy(), end_top, end_top_prob,
                      lens="tuned" if tuned is not None else "logit", tuned=tuned,
                      cost={"forward_passes": n, "lens_rows": int(n * P * K)})
