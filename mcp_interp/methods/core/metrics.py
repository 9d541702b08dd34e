"""Per-example task metrics at the final position, computable from the final residual stream.

Every metric offers two equivalent entry points:
- `from_final_resid(model, resid, example_idx)`: resid is the residual stream *before* ln_final at
  the final position, [rows, d_model]; only the unembedding columns the metric reads are used
  (logit diff needs 2 columns of W_U, not 49k). This is what the fast patching engine calls.
- `from_logits(model, logits, example_idx)`: final-position logits [rows, d_vocab] (the naive path).
`example_idx[rows]` says which example each row belongs to (rows may repeat examples).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class Metric(Protocol):
    """A per-example scalar read at the final position (see the module docstring)."""

    def from_final_resid(self, model, resid: Tensor, example_idx: Tensor) -> Tensor:
        """resid [rows, d_model] before ln_final, example_idx [rows] -> metric [rows] float32."""
        ...

    def from_logits(self, model, logits: Tensor, example_idx: Tensor) -> Tensor:
        """logits [rows, d_vocab], example_idx [rows] -> metric [rows] float32."""
        ...

    def n_unembed_columns(self, model) -> int:
        """How many unembedding columns `from_final_resid` reads per row (for FLOP counts)."""
        ...


def final_normed(model, resid: Tensor) -> Tensor:
    """ln_final applied to [rows, d_model] -> [rows, d_model] (identity for models without a final norm)."""
    if model.cfg.normalization_type is None:
        return resid
    return model.ln_final(resid)


def _softcap(model, logits: Tensor) -> Tensor:
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    return logits if cap <= 0 else cap * torch.tanh(logits / cap)


def full_logits(model, resid: Tensor) -> Tensor:
    """Every logit of final residuals resid [rows, d_model] (before ln_final): [rows, d_vocab], soft cap applied."""
    return _softcap(model, model.unembed(final_normed(model, resid)[:, None])[:, 0])


def column_logits(model, resid: Tensor, token_ids: Tensor) -> Tensor:
    """logit[row, token_ids[row]] for each row: resid [rows, d_model] (before ln_final), token_ids [rows]
    -> [rows], using only those unembedding columns (output soft cap applied)."""
    x = final_normed(model, resid).float()  # float32 like the model's own unembedding (bf16/fp16 models too)
    w = model.unembed.W_U[:, token_ids.to(model.unembed.W_U.device)]  # [d_model, rows]
    out = ((x * w.T.to(device=x.device, dtype=x.dtype)).sum(-1)
           + model.unembed.b_U[token_ids].to(device=x.device, dtype=x.dtype))
    return _softcap(model, out)


def _idx(t: Tensor, example_idx: Tensor, device) -> Tensor:
    return t.to(device)[example_idx.to(device)]


@dataclass
class LogitDiffMetric:
    """m = logit[answer] - logit[cf_answer] at the final position; answer, cf_answer: [n] token ids."""

    answer: Tensor
    cf_answer: Tensor
    name: str = "logit_diff"

    def __post_init__(self):
        self.answer = torch.as_tensor(self.answer, dtype=torch.long).flatten()
        self.cf_answer = torch.as_tensor(self.cf_answer, dtype=torch.long).flatten()
        if self.answer.shape != self.cf_answer.shape:
            raise ValueError("answer and cf_answer must have the same length")

    def from_final_resid(self, model, resid: Tensor, example_idx: Tensor) -> Tensor:
        """resid [rows, d_model] -> [rows]: two unembedding columns per row."""
        a = _idx(self.answer, example_idx, resid.device)
        b = _idx(self.cf_answer, example_idx, resid.device)
        return (column_logits(model, resid, a) - column_logits(model, resid, b)).float()

    def from_logits(self, model, logits: Tensor, example_idx: Tensor) -> Tensor:
        """logits [rows, d_vocab] -> [rows]."""
        a = _idx(self.answer, example_idx, logits.device)
        b = _idx(self.cf_answer, example_idx, logits.device)
        rows = torch.arange(len(logits), device=logits.device)
        return (logits[rows, a] - logits[rows, b]).float()

    def n_unembed_columns(self, model) -> int:
        """2: the answer's and the counterfactual answer's."""
        return 2


@dataclass
class ProbMetric:
    """m = softmax(logits)[answer] at the final position (needs the full unembedding); answer: [n] token ids."""

    answer: Tensor
    name: str = "prob"

    def __post_init__(self):
        self.answer = torch.as_tensor(self.answer, dtype=torch.long).flatten()

    def from_final_resid(self, model, resid: Tensor, example_idx: Tensor) -> Tensor:
        """resid [rows, d_model] -> [rows]: unembeds the whole vocabulary (the softmax needs it)."""
        return self.from_logits(model, full_logits(model, resid), example_idx)

    def from_logits(self, model, logits: Tensor, example_idx: Tensor) -> Tensor:
        """logits [rows, d_vocab] -> [rows] probabilities (softmax in float32)."""
        a = _idx(self.answer, example_idx, logits.device)
        rows = torch.arange(len(logits), device=logits.device)
        return torch.softmax(logits.float(), dim=-1)[rows, a]

    def n_unembed_columns(self, model) -> int:
        """d_vocab_out: every column."""
        return model.cfg.d_vocab_out


@dataclass
class ProbDiffMetric:
    """m = P(correct set) - P(wrong set) at the final position (answer-set tasks such as greater-than; needs the
    full unembedding). candidates: [C] token ids; sign: [n, C] the weight of candidate c for example i: +1 per time
    it is listed correct, -1 per time listed wrong (`from_sets` builds both from per-example id lists)."""

    candidates: Tensor
    sign: Tensor
    name: str = "prob_diff"

    @classmethod
    def from_sets(cls, good: list[list[int]], bad: list[list[int]]) -> "ProbDiffMetric":
        """good[i], bad[i]: the correct and wrong answer token ids of example i."""
        cand = sorted({t for ids in good + bad for t in ids})
        col = {t: j for j, t in enumerate(cand)}
        sign = torch.zeros(len(good), len(cand))
        for i, (g, b) in enumerate(zip(good, bad)):  # sums over the lists, as run_baseline's prob_diff does
            for t in g:
                sign[i, col[t]] += 1.0
            for t in b:
                sign[i, col[t]] -= 1.0
        return cls(torch.tensor(cand, dtype=torch.long), sign)

    def from_final_resid(self, model, resid: Tensor, example_idx: Tensor) -> Tensor:
        """resid [rows, d_model] -> [rows]: unembeds the whole vocabulary (the softmax needs it)."""
        return self.from_logits(model, full_logits(model, resid), example_idx)

    def from_logits(self, model, logits: Tensor, example_idx: Tensor) -> Tensor:
        """logits [rows, d_vocab] -> [rows] probability differences (softmax in float32)."""
        probs = torch.softmax(logits.float(), dim=-1)[:, self.candidates.to(logits.device)]
        return (probs * _idx(self.sign, example_idx, logits.device)).sum(-1)

    def n_unembed_columns(self, model) -> int:
        """d_vocab_out: every column."""
        return model.cfg.d_vocab_out
