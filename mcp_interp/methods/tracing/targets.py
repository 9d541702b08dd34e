"""The target nodes of an attribution graph: logits at the last position, read as circuit-tracer reads them.

A `LogitTarget(token)` is the token's logit demeaned over the vocabulary, logit[t] - mean_v logit[v]: its read-out
vector on the final norm's output is W_U[:, t] - mean_v W_U[:, v] (constant b_U[t] - mean(b_U)). A
`LogitTarget(token, counterfactual=c)` is the logit difference logit[t] - logit[c] of a task example's answer and
counterfactual answer: read-out W_U[:, t] - W_U[:, c]. Demeaning (or differencing) removes what moves every logit
together, which no feature can be credited with.

Influence weights: the targets' softmax probabilities (as circuit-tracer weights its logit nodes) when every target
is a demeaned logit; equal weights 1/K when any is a logit difference (a difference has no probability).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LogitTarget:
    """A target node: token's demeaned logit, or token's logit minus counterfactual's; label names it in words."""

    token: int
    counterfactual: int | None = None
    label: str = ""


def as_targets(targets, d_vocab: int) -> list[LogitTarget]:
    """LogitTargets from a LogitTarget, a token id or a sequence of either. ValueError (naming `targets`) for an
    empty list or a token outside the vocabulary."""
    if isinstance(targets, (LogitTarget, int)):
        targets = [targets]
    out = [t if isinstance(t, LogitTarget) else LogitTarget(int(t)) for t in targets]
    if not out:
        raise ValueError("targets: give at least one target token")
    for t in out:
        for tok in (t.token, t.counterfactual):
            if tok is not None and not 0 <= int(tok) < d_vocab:
                raise ValueError(f"targets: token id {tok} is not in the vocabulary (0..{d_vocab - 1}); name a token "
                                 "the tokenizer produces")
        if t.counterfactual is not None and t.counterfactual == t.token:
            raise ValueError(f"targets: the answer and the counterfactual answer are the same token ({t.token}); a "
                             "logit difference needs two different tokens")
    return out


def salient_targets(logits: Tensor, max_n_logits: int = 10, desired_logit_prob: float = 0.95) -> list[LogitTarget]:
    """The most likely next tokens until their probabilities sum to desired_logit_prob, at most max_n_logits (the
    published method's default target set). logits: [d_vocab] at the last position."""
    if max_n_logits < 1 or not 0 < desired_logit_prob <= 1:
        raise ValueError("max_n_logits must be >= 1 and desired_logit_prob in (0, 1]")
    probs = torch.softmax(logits.float(), -1)
    top = probs.topk(min(max_n_logits, probs.shape[0]))
    n = int(torch.searchsorted(top.values.cumsum(0), torch.tensor(desired_logit_prob, device=probs.device))) + 1
    return [LogitTarget(int(i)) for i in top.indices[:min(n, len(top.indices))]]


def readout(model, target: LogitTarget) -> tuple[Tensor, float]:
    """(u [d_model], constant): the target's value is ln_final(resid) . u + constant with the final norm frozen."""
    W_U, b_U = model.unembed.W_U.detach().float(), model.unembed.b_U.detach().float()
    if target.counterfactual is None:
        return W_U[:, target.token] - W_U.mean(1), float(b_U[target.token] - b_U.mean())
    return W_U[:, target.token] - W_U[:, target.counterfactual], float(b_U[target.token] - b_U[target.counterfactual])


def target_value(logits: Tensor, target: LogitTarget) -> float:
    """The target's value in the real model's logits [d_vocab] at the last position."""
    logits = logits.float()
    if target.counterfactual is None:
        return float(logits[target.token] - logits.mean())
    return float(logits[target.token] - logits[target.counterfactual])


def target_weights(targets: Sequence[LogitTarget], logits: Tensor) -> Tensor:
    """[K] influence weights (see the module docstring)."""
    if any(t.counterfactual is not None for t in targets):
        return torch.full((len(targets),), 1.0 / len(targets))
    probs = torch.softmax(logits.float().cpu(), -1)
    return probs[[t.token for t in targets]]


__all__ = ["LogitTarget", "as_targets", "readout", "salient_targets", "target_value", "target_weights"]
