"""Planted *pairs* of models for compare_features: two "models" whose activations at a site carry known features,
with the ground truth of which feature of A is which feature of B.

A pair is drawn from a seed. There are `n_shared` latent variables both sides represent and `n_private` only one
side does; each latent is sparse and non-negative (active on a seeded fraction of 5-30% of the examples with an
exponential magnitude), the way SAE latents and most features are. Side A writes each of its features along its
own direction of an orthonormal basis of R^d_a (random, seeded), side B along its own basis of R^d_b (another
width), with per-side gains, in a per-side random order, plus isotropic Gaussian noise in the whole site; so no
coordinate of A corresponds to a coordinate of B and the shared features sit in different bases. Each side's
metric is linear in its site activation, `metric = acts @ readout`, reading a seeded subset of features with
per-side weights (some features are never read); zero-ablating a feature (keeping everything else, the error term
included) changes the metric by weight x value, so its causal effect is known.

Kinds:
  shared     the shared latents are the same on both sides: the true matches are `truth`;
  unrelated  B's latents are independent draws from the same distributions: no true match, so every match is false;
  lookalike  as `shared`, but for a seeded subset of the read shared features (`lookalike`) B's readout weight has
             the opposite sign: they correlate perfectly and act oppositely (must come out contradicted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("shared", "unrelated", "lookalike")


@dataclass
class PlantedPair:
    kind: str
    seed: int
    acts_a: np.ndarray            # [n, d_a] site activations of A
    acts_b: np.ndarray            # [n, d_b]
    dirs_a: np.ndarray            # [F_a, d_a] feature directions of A (orthonormal rows)
    dirs_b: np.ndarray            # [F_b, d_b]
    readout_a: np.ndarray         # [d_a]: metric_a = acts_a @ readout_a
    readout_b: np.ndarray
    truth: list[tuple[int, int]]  # (feature of A, feature of B) carrying the same latent
    private_a: list[int]
    private_b: list[int]
    read_a: list[int]             # features each side's metric reads (weight != 0)
    read_b: list[int]
    lookalike: list[tuple[int, int]] = field(default_factory=list)  # true pairs with opposite readout signs

    def features(self, side: str) -> np.ndarray:
        """[n, F] feature values: the site activation read along the side's (orthonormal) feature directions."""
        acts, dirs = (self.acts_a, self.dirs_a) if side == "a" else (self.acts_b, self.dirs_b)
        return acts @ dirs.T

    def metric(self, side: str, acts: np.ndarray | None = None) -> np.ndarray:
        base, r = (self.acts_a, self.readout_a) if side == "a" else (self.acts_b, self.readout_b)
        return (base if acts is None else acts) @ r

    def ablation_effect(self, side: str, feature: int) -> np.ndarray:
        """Per-example m(clean) - m(feature zero-ablated), the intervention acting on the site activation with
        the rest of it (other features and noise) kept."""
        acts, dirs = (self.acts_a, self.dirs_a) if side == "a" else (self.acts_b, self.dirs_b)
        f = acts @ dirs[feature]
        return self.metric(side) - self.metric(side, acts - f[:, None] * dirs[feature][None])


def _basis(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.sign(np.diag(r)))[:, :k].T  # [k, d] orthonormal rows


def _latents(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    rate = rng.uniform(0.05, 0.3, k)
    on = rng.random((n, k)) < rate
    return on * (0.5 + rng.exponential(1.0, (n, k)))


def build_planted_pair(seed: int, kind: str = "shared", n: int = 512, n_shared: int = 20, n_private: int = 8,
                       d_a: int = 32, d_b: int = 40, noise: float = 0.25, n_lookalike: int = 3) -> PlantedPair:
    """The planted pair of `kind` for `seed` (module doc)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {KINDS}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    F = n_shared + n_private
    if F > min(d_a, d_b):
        raise ValueError(f"{F} features need d_a, d_b >= {F}")
    shared = _latents(rng, n, n_shared)
    lat_a = np.concatenate([shared, _latents(rng, n, n_private)], 1)
    lat_b = np.concatenate([shared if kind != "unrelated" else _latents(rng, n, n_shared),
                            _latents(rng, n, n_private)], 1)
    # feature slot of latent k on each side: a random order, so index i of A is not index i of B
    slot_a, slot_b = rng.permutation(F), rng.permutation(F)
    dirs_a, dirs_b = _basis(rng, d_a, F), _basis(rng, d_b, F)
    gain_a, gain_b = rng.uniform(0.5, 2.0, F), rng.uniform(0.5, 2.0, F)
    acts_a = (lat_a * gain_a) @ dirs_a[slot_a] + noise * rng.standard_normal((n, d_a))
    acts_b = (lat_b * gain_b) @ dirs_b[slot_b] + noise * rng.standard_normal((n, d_b))
    # readouts: about two thirds of the latents are read, with weights of random sign and size 0.5-1.5
    read = rng.random(F) < 2 / 3
    w = rng.choice([-1.0, 1.0], F) * rng.uniform(0.5, 1.5, F) * read
    w_b = w * rng.uniform(0.7, 1.3, F)
    look = []
    if kind == "lookalike":
        cand = [k for k in range(n_shared) if read[k]]
        look = sorted(rng.choice(cand, size=min(n_lookalike, len(cand)), replace=False).tolist())
        w_b[look] = -w_b[look]
    if kind == "unrelated":  # B's private readouts of its own independent latents
        w_b = rng.choice([-1.0, 1.0], F) * rng.uniform(0.5, 1.5, F) * (rng.random(F) < 2 / 3)
    readout_a = (w / gain_a) @ dirs_a[slot_a]
    readout_b = (w_b / gain_b) @ dirs_b[slot_b]
    truth = [(int(slot_a[k]), int(slot_b[k])) for k in range(n_shared)] if kind != "unrelated" else []
    private_a = [int(slot_a[k]) for k in range(n_shared if kind != "unrelated" else 0, F)]
    private_b = [int(slot_b[k]) for k in range(n_shared if kind != "unrelated" else 0, F)]
    return PlantedPair(kind=kind, seed=seed, acts_a=acts_a, acts_b=acts_b, dirs_a=dirs_a, dirs_b=dirs_b,
                       readout_a=readout_a, readout_b=readout_b, truth=truth, private_a=private_a,
                       private_b=private_b, read_a=[int(slot_a[k]) for k in np.flatnonzero(w)],
                       read_b=[int(slot_b[k]) for k in np.flatnonzero(w_b)],
                       lookalike=[(int(slot_a[k]), int(slot_b[k])) for k in look])


__all__ = ["KINDS", "PlantedPair", "build_planted_pair"]
