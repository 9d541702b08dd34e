"""Does the model solve the task? Per-example metrics on clean and counterfactual prompts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ...tasks.dataset import TaskDataset
from ..core.forward import final_logits
from ..core.stats import ci_dict


@dataclass
class BaselineTable:
    """Per-example columns (numpy arrays [n]): logit_diff, prob, accuracy, ... on clean and counterfactual
    prompts (answer-set tasks: prob_diff, accuracy, ...), plus the argmax tokens pred / cf_pred."""

    columns: dict[str, np.ndarray]

    def summary(self, seed: int = 0) -> dict[str, dict]:
        """Per column (pred / cf_pred excluded): {"mean", "ci95": [lo, hi] (bootstrap over examples), "n"}."""
        return {k: ci_dict(v, seed=seed) for k, v in self.columns.items() if k not in ("pred", "cf_pred")}


def _single_token_columns(logits: torch.Tensor, cf_logits: torch.Tensor, ds: TaskDataset) -> dict[str, np.ndarray]:
    a = torch.tensor([e.answer_id for e in ds.examples])
    b = torch.tensor([e.cf_answer_id for e in ds.examples])
    rows = torch.arange(len(a))
    probs, cf_probs = logits.softmax(-1), cf_logits.softmax(-1)
    pred, cf_pred = logits.argmax(-1), cf_logits.argmax(-1)
    return {
        # logit difference answer vs counterfactual answer, on clean and on counterfactual prompts
        "logit_diff": (logits[rows, a] - logits[rows, b]).numpy(),
        "cf_logit_diff": (cf_logits[rows, a] - cf_logits[rows, b]).numpy(),
        "prob": probs[rows, a].numpy(),
        "cf_prob_of_cf_answer": cf_probs[rows, b].numpy(),
        "accuracy": (pred == a).float().numpy(),
        # two-way accuracy: the answer beats the counterfactual answer
        "pairwise_accuracy": (logits[rows, a] > logits[rows, b]).float().numpy(),
        "cf_follows_label": (cf_pred == b).float().numpy(),
        "cf_pairwise_follows": (cf_logits[rows, b] > cf_logits[rows, a]).float().numpy(),
        "pred": pred.numpy(),
        "cf_pred": cf_pred.numpy(),
    }


def _answer_set_columns(logits: torch.Tensor, cf_logits: torch.Tensor, ds: TaskDataset) -> dict[str, np.ndarray]:
    cols: dict[str, list] = {k: [] for k in ("prob_diff", "cf_prob_diff", "accuracy", "cf_follows_label")}
    probs, cf_probs = logits.softmax(-1), cf_logits.softmax(-1)
    for i, e in enumerate(ds.examples):
        good, bad = torch.tensor(e.good_ids, dtype=torch.long), torch.tensor(e.bad_ids, dtype=torch.long)
        cols["prob_diff"].append(float(probs[i, good].sum() - probs[i, bad].sum()))
        # the same metric on the counterfactual prompt (this example's sets, as cf_logit_diff keeps a and b)
        cols["cf_prob_diff"].append(float(cf_probs[i, good].sum() - cf_probs[i, bad].sum()))
        cand = torch.tensor(sorted(set(e.good_ids) | set(e.bad_ids)), dtype=torch.long)
        best = int(cand[logits[i, cand].argmax()])
        cols["accuracy"].append(float(best in e.good_ids))
        cf_cand = torch.tensor(sorted(set(e.cf_good_ids) | set(e.cf_bad_ids)), dtype=torch.long)
        cf_best = int(cf_cand[cf_logits[i, cf_cand].argmax()])
        cols["cf_follows_label"].append(float(cf_best in e.cf_good_ids))
    out = {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}
    out["pred"] = logits.argmax(-1).numpy()
    out["cf_pred"] = cf_logits.argmax(-1).numpy()
    return out


def run_baseline(model, ds: TaskDataset, batch_size: int = 32,
                 progress: Callable[[float, str], None] | None = None) -> BaselineTable:
    """Final-position logits [n, d_vocab] of every clean and counterfactual prompt (2n forwards, batched by
    length), reduced to per-example columns: single-token tasks compare the answer with the counterfactual
    answer, answer-set tasks the probability mass of the correct set with the wrong one."""
    n = len(ds)
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        if progress:
            progress(done[0] / (2 * n), f"forward {done[0]}/{2 * n} prompts")

    logits = final_logits(model, [e.tokens for e in ds.examples], batch_size, tick)
    cf_logits = final_logits(model, [e.cf_tokens for e in ds.examples], batch_size, tick)
    if ds.spec.answer_set is not None:
        return BaselineTable(_answer_set_columns(logits, cf_logits, ds))
    return BaselineTable(_single_token_columns(logits, cf_logits, ds))


def counterfactual_check(model, ds: TaskDataset, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per example: does the causal label change, and does the model's prediction on the counterfactual follow it?

    "Follows" means the model's top candidate on the counterfactual prompt is the counterfactual label
    (for answer-set tasks: lies in the counterfactual's correct set).
    Returns {"label_changes", "follows"}: [n] float arrays of 0/1.
    """
    cf_logits = final_logits(model, [e.cf_tokens for e in ds.examples], batch_size)
    changes = np.array([e.answer != e.cf_answer for e in ds.examples], dtype=np.float64)
    if ds.spec.answer_set is not None:
        follows = []
        for i, e in enumerate(ds.examples):
            cand = torch.tensor(sorted(set(e.cf_good_ids) | set(e.cf_bad_ids)), dtype=torch.long)
            follows.append(float(int(cand[cf_logits[i, cand].argmax()]) in e.cf_good_ids))
        return {"label_changes": changes, "follows": np.asarray(follows)}
    pred = cf_logits.argmax(-1).numpy()
    follows = np.array([pred[i] == e.cf_answer_id for i, e in enumerate(ds.examples)], dtype=np.float64)
    return {"label_changes": changes, "follows": follows}
