"""What every toy model shares: the character alphabet and reproducible random initialisation."""

from __future__ import annotations

import string

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

# Lowercase letters, digits, space and the punctuation toy tasks need (brackets, sentences).
TOY_ALPHABET = string.ascii_lowercase + string.digits + " ()[]{}.,:;!?'-="


def seeded_model(cfg: HookedTransformerConfig, seed: int) -> HookedTransformer:
    """Randomly initialised model, reproducible, without disturbing the global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg.seed = None  # TL would otherwise reseed globally in init_weights
        return HookedTransformer(cfg, move_to_device=False)
