"""One comparison of two sides' aligned activations, start to finish: which layer pair to match, global similarity
with permutation nulls, the one-to-one matching (and a noise ceiling), the variable each match carries, and which
matches deserve a causal test. Pure numpy on matrices the caller collected; the causal tests run models and stay
with the caller.

Choosing the layer pair. On task prompts every layer of both models sees the same few tokens at the compared
position, so the pair of highest raw CKA is usually the embedding (both sides only know the token there). Pairs are
therefore ranked by what they share beyond the token identity: CKA of the activations with each token's mean
removed (per side, on its own tokens). With a variable, by how well both layers separate it (the weaker side's best
single-feature separation). Raw CKA decides only when the token identity explains every row (all tokens distinct).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.footprint import F32, F64
from ..core.progress import Progress, ShouldCancel, check_cancelled
from ..core.stats import separation
from .matching import Matching, match_features
from .similarity import cka_map, cka_test, linear_cka, row_shuffler, svcca, svcca_test


@dataclass
class LayerChoice:
    """The matched pair (indices into the sides' layer lists), the raw CKA map, what the pair was ranked by
    (`scores`, same shape; None with one layer per side), the criterion and a sentence saying why."""

    pair: tuple[int, int]
    cka_map: np.ndarray | None
    scores: np.ndarray | None
    criterion: str  # "single" | "variable" | "beyond_tokens" | "cka"
    reason: str


def token_residual(X: np.ndarray, tokens: Sequence[int]) -> np.ndarray:
    """X [n, d] minus the mean of the rows that show the same token: what a layer holds beyond the token identity
    (a row whose token appears once is all token identity, so it becomes 0)."""
    X = np.asarray(X, dtype=np.float64)
    _, inv = np.unique(np.asarray(tokens), return_inverse=True)
    sums = np.zeros((inv.max() + 1, X.shape[1])) if len(inv) else np.zeros((0, X.shape[1]))
    np.add.at(sums, inv, X)
    counts = np.bincount(inv, minlength=len(sums))[:, None]
    return X - (sums / np.maximum(counts, 1))[inv]


def choose_layers(va: Sequence[np.ndarray], vb: Sequence[np.ndarray], tokens_a: Sequence[int] | None = None,
                  tokens_b: Sequence[int] | None = None, labels: Sequence | None = None,
                  names: tuple[Sequence[int], Sequence[int]] | None = None) -> LayerChoice:
    """The layer pair to match features at (see the module doc). va / vb: per layer [n, F] on the same rows;
    tokens_*: each row's token on that side; labels: the variable's value per row; names: the layer numbers."""
    la, lb = names or (list(range(len(va))), list(range(len(vb))))
    if len(va) == 1 and len(vb) == 1:
        return LayerChoice((0, 0), None, None, "single", "one layer per side")
    raw = cka_map(va, vb)
    if labels is not None and len(set(map(str, labels))) > 1:
        sa = np.array([np.nanmax(separation(x, labels)) for x in va])
        sb = np.array([np.nanmax(separation(y, labels)) for y in vb])
        scores = np.minimum(sa[:, None], sb[None, :])
        # among equally separating pairs, the more similar one
        i, j = np.unravel_index(np.lexsort((-np.nan_to_num(raw, nan=-1).ravel(), -scores.ravel()))[0], scores.shape)
        return LayerChoice((int(i), int(j)), raw, scores, "variable",
                           f"layers {la[i]} (A) / {lb[j]} (B) separate the variable best on both sides (best feature "
                           f"{sa[i]:.2f} / {sb[j]:.2f}); raw CKA there {raw[i, j]:.3f}, highest raw CKA "
                           f"{np.nanmax(raw):.3f}")
    if tokens_a is not None and tokens_b is not None:
        ra = [token_residual(x, tokens_a) for x in va]
        rb = [token_residual(y, tokens_b) for y in vb]
        with np.errstate(all="ignore"):
            scores = cka_map(ra, rb)
        if np.isfinite(scores).any():
            i, j = np.unravel_index(np.nanargmax(scores), scores.shape)
            top = np.unravel_index(np.nanargmax(raw), raw.shape)
            note = "" if (i, j) == top else (f" (raw CKA peaks at layers {la[top[0]]} / {lb[top[1]]}, {raw[top]:.3f}, "
                                              f"where the token identity explains more)")
            return LayerChoice((int(i), int(j)), raw, scores, "beyond_tokens",
                               f"layers {la[i]} (A) / {lb[j]} (B) share the most beyond the token identity (CKA "
                               f"{scores[i, j]:.3f} with each token's mean removed; raw {raw[i, j]:.3f}){note}")
    i, j = np.unravel_index(np.nanargmax(raw), raw.shape)
    return LayerChoice((int(i), int(j)), raw, raw, "cka",
                       f"layers {la[i]} (A) / {lb[j]} (B), the highest raw CKA ({raw[i, j]:.3f}); every row's token "
                       f"is distinct, so nothing beyond the token identity could be measured")


def comparison_footprint(rows: int, widths_a: Sequence[int], widths_b: Sequence[int]) -> float:
    """Peak host bytes of `compare_sides` on `rows` aligned rows with those feature widths per layer: the values
    (float32, and a float64 copy of the matched pair), every layer's centred Gram matrix twice (raw and beyond the
    tokens), and the matching's correlation and cost matrices."""
    fa, fb = max(widths_a), max(widths_b)
    values = rows * (sum(widths_a) + sum(widths_b)) * F32 * 2 + rows * (fa + fb) * F64 * 3
    grams = 2 * (len(widths_a) + len(widths_b)) * rows * rows * F64
    return values + grams + 4 * fa * fb * F64


@dataclass
class Comparison:
    """What `compare` found; `order` lists the matches to report (the FDR set by |r|, then the rest by |r|),
    `variable_a` / `variable_b` map a matched feature to its separation of the variable, `tested` the matches
    chosen for a causal test."""

    layers: LayerChoice
    cka: dict
    svcca: dict
    matching: Matching
    ceiling: dict | None = None
    order: list[int] = field(default_factory=list)
    variable_a: dict[int, float] | None = None
    variable_b: dict[int, float] | None = None
    tested: list[int] = field(default_factory=list)


def compare_sides(va: Sequence[np.ndarray], vb: Sequence[np.ndarray], *, groups: Sequence[int] | None = None,
            tokens_a: Sequence[int] | None = None, tokens_b: Sequence[int] | None = None,
            labels: Sequence | None = None, layer_names: tuple[Sequence[int], Sequence[int]] | None = None,
            ceiling: np.ndarray | None = None, n_perm: int = 200, n_null: int = 20, fdr: float = 0.05,
            null: str = "both", test_top: int = 0, seed: int = 0, progress: Progress | None = None,
            should_cancel: ShouldCancel | None = None) -> Comparison:
    """Compare side A (per layer [n, Fa]) with side B (per layer [n, Fb]) on the same n rows. groups: the sequence
    of each row on a corpus (the nulls move whole sequences); ceiling: another A at the chosen layer [n, Fc]."""
    def step(frac: float, msg: str) -> None:
        check_cancelled(should_cancel, "comparison")
        if progress is not None:
            progress(frac, msg)

    n = len(va[0])
    shuffle = row_shuffler(n, groups)
    choice = choose_layers(va, vb, tokens_a, tokens_b, labels, layer_names)
    A, B = va[choice.pair[0]], vb[choice.pair[1]]
    step(0.1, "CKA / SVCCA with permutation nulls")
    ck = cka_test(A, B, n_perm=n_perm, seed=seed, shuffle=shuffle, should_cancel=should_cancel)
    sv = svcca_test(A, B, n_perm=n_perm, seed=seed, shuffle=shuffle, should_cancel=should_cancel)
    step(0.4, f"matching {A.shape[1]} x {B.shape[1]} features, {n_null} null replicates")
    m = match_features(A, B, fdr=fdr, null=null, n_null=n_null, seed=seed, shuffle=shuffle,
                       should_cancel=should_cancel)
    out = Comparison(choice, ck, sv, m)
    if ceiling is not None:
        step(0.7, "noise ceiling")
        mc = match_features(A, ceiling, fdr=fdr, null=null, n_null=n_null, seed=seed, shuffle=shuffle,
                            should_cancel=should_cancel)
        out.ceiling = {"cka": linear_cka(A, ceiling), "svcca": svcca(A, ceiling)["mean"], "n_pairs": len(mc.r),
                       "n_matched": mc.n_significant, "expected_null": mc.expected_null}
    out.order = sorted(range(len(m.r)), key=lambda k: (not m.significant[k], -abs(m.r[k])))
    sig = [k for k in out.order if m.significant[k]]
    if labels is not None and len(set(map(str, labels))) > 1 and sig:
        fa, fb = [int(m.rows[k]) for k in sig], [int(m.cols[k]) for k in sig]
        out.variable_a = dict(zip(fa, separation(A[:, fa], labels)))
        out.variable_b = dict(zip(fb, separation(B[:, fb], labels)))
    if test_top and sig:
        va_, vb_ = out.variable_a, out.variable_b
        key = (lambda k: -max(va_[int(m.rows[k])], vb_[int(m.cols[k])])) if va_ else (lambda k: -abs(m.r[k]))
        out.tested = sorted(sig, key=key)[:test_top]
    step(1.0, f"{m.n_significant} of {len(m.r)} pairs matched")
    return out
