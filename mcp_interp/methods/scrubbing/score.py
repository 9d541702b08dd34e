"""Task loss and task metric for causal scrubbing, and their 'random' baselines.

L is the cross-entropy of the answer's (first) token at the final position. L_random is the loss of
the model's outputs paired with another example's label: the mean over every (reference i, input j)
pair within i's token layout, j = i included — exactly the expectation of the 'nothing matters'
hypothesis, whose output comes from one uniformly drawn input of the layout. The same pairing gives
m_random for the task metric (logit_diff, prob, accuracy, prob_diff).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...tasks.dataset import TaskDataset


@dataclass
class SeedStats:
    """A number over resampling seeds: mean, sample std (0 for one seed) and the per-seed values."""

    mean: float
    std: float
    per_seed: list[float]

    @classmethod
    def of(cls, values) -> SeedStats:
        """From one value per seed ([seeds])."""
        v = np.asarray(values, dtype=np.float64)
        return cls(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, [float(x) for x in v])

    def as_dict(self) -> dict:
        """JSON-ready {mean, std, per_seed}."""
        return {"mean": self.mean, "std": self.std, "per_seed": self.per_seed}


class TaskScore:
    """Per-example loss and metric of final-position logits against given examples' labels (the answer token,
    the counterfactual answer token, and the good / bad token sets of prob_diff)."""

    def __init__(self, ds: TaskDataset):
        self.metric_name = ds.spec.metric
        self.answer = torch.tensor([e.answer_id for e in ds.examples])
        self.cf_answer = torch.tensor([e.cf_answer_id for e in ds.examples])
        self.good = [torch.tensor(e.good_ids, dtype=torch.long) for e in ds.examples]
        self.bad = [torch.tensor(e.bad_ids, dtype=torch.long) for e in ds.examples]

    def pair_matrices(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """logits [m, d_vocab], labels [k] example indices -> loss [m, k] and metric [m, k]: row j of logits
        scored against example labels[i] (float32, CPU)."""
        logits = logits.float().cpu()
        a, b = self.answer[labels], self.cf_answer[labels]
        loss = -torch.log_softmax(logits, -1)[:, a]
        if self.metric_name == "logit_diff":
            metric = logits[:, a] - logits[:, b]
        elif self.metric_name == "prob":
            metric = torch.softmax(logits, -1)[:, a]
        elif self.metric_name == "accuracy":
            metric = (logits.argmax(-1)[:, None] == a[None, :]).float()
        else:  # prob_diff
            probs = torch.softmax(logits, -1)
            metric = torch.stack([probs[:, self.good[i]].sum(-1) - probs[:, self.bad[i]].sum(-1)
                                  for i in labels.tolist()], dim=1)
        return loss, metric

    def score(self, logits: Tensor, labels: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """logits [m, d_vocab], labels [m] -> per-row loss and metric [m] (float64) of logits[k] against example
        labels[k]."""
        loss, metric = [], []
        for k0 in range(0, len(labels), 256):
            ls, ms = self.pair_matrices(logits[k0:k0 + 256], labels[k0:k0 + 256])
            loss.append(ls.diagonal())
            metric.append(ms.diagonal())
        return torch.cat(loss).numpy().astype(np.float64), torch.cat(metric).numpy().astype(np.float64)

    def random(self, logits: Tensor, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """logits [n, d_vocab] (dataset order), idx [k] one layout's examples -> loss and metric [k] (float64): per
        reference i in idx, the mean over inputs j in idx of logits[j] scored against i's label."""
        ls, ms = self.pair_matrices(logits[torch.as_tensor(idx)], torch.as_tensor(idx))
        return ls.mean(0).numpy().astype(np.float64), ms.mean(0).numpy().astype(np.float64)


def recovered(l_random: float, l_scrubbed: float, l_model: float) -> float:
    """Loss recovered (L_random - L_scrubbed) / (L_random - L_model): 1 = the model's loss, 0 = random."""
    den = l_random - l_model
    return float((l_random - l_scrubbed) / den) if den != 0 else float("nan")


def recovered_metric(m_scrubbed: float, m_random: float, m_model: float) -> float:
    """(m_scrubbed - m_random) / (m_model - m_random)."""
    den = m_model - m_random
    return float((m_scrubbed - m_random) / den) if den != 0 else float("nan")


__all__ = ["SeedStats", "TaskScore", "recovered", "recovered_metric"]
