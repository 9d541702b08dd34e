"""A *decodable but unused* direction: toy/planted-direction plus a head that writes g where nothing reads it.

Ground truth for probes and steering (issue 27): a probe decodes g from the decoy direction as well as from the
used one, but only the used direction is causal. Registered as `toy/planted-direction-decoy` (seed 0);
`build_planted_direction_decoy(seed)` gives other seeds. It solves the `planted-direction` task ('c204=' -> 'k').

Construction: `build_planted_direction(seed)` (see its docstring: g = +1 ('lo') / -1 ('hi') along the used
direction u = Q e_G of blocks.1.hook_resid_pre at END, which MLP1 reads), then head L0H3, inert there, becomes a
copy of the g mover L0H0 (attends from '=' to position 0, value +-1 by the letter's group) whose output is written
along v = Q e_z instead of u: e_z is the token-embedding coordinate of 'z', a character no prompt of the task uses,
so v is orthogonal to u, to the w directions and to the answer read-out. Downstream of the site nothing reads v
(block 1's attention is zero, MLP1 reads G and W only, the unembedding reads the answer coordinates only), so at
the site, END:
  resid . u = +1 ('lo') / -1 ('hi')   (used: adding -2u flips the answer's group)
  resid . v = DECOY_SCALE * (+1 / -1) (unused: adding any multiple of v leaves every logit unchanged)
and everything else the model computes is exactly toy/planted-direction's.
"""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens import HookedTransformer

from ..models.tokenizers import CharTokenizer
from .common import TOY_ALPHABET
from .planted_direction import SITE_HOOK, SITE_LAYER, build_planted_direction, haar_rotation, planted_direction_meta

DECOY_HEAD = 3
DECOY_CHAR = "z"
DECOY_SCALE = 1.0


def decoy_direction(seed: int = 0) -> torch.Tensor:
    """v: the unit direction the decoy head writes g along (float32, [d_model])."""
    return haar_rotation(seed)[:, TOY_ALPHABET.index(DECOY_CHAR)].float()


def planted_direction_decoy_meta(seed: int = 0) -> dict[str, Any]:
    """Ground truth of `build_planted_direction_decoy(seed)`: the used direction u, the unused decoy v."""
    meta = planted_direction_meta(seed)
    return {**meta, "kind": "planted-direction-decoy", "decoy_direction": decoy_direction(seed).tolist(),
            "decoy_head": {"layer": 0, "head": DECOY_HEAD}, "decoy_scale": DECOY_SCALE,
            "site": {"hook": SITE_HOOK, "layer": SITE_LAYER, "kind": "resid_pre", "position": "END", "head": None}}


@torch.no_grad()
def build_planted_direction_decoy(seed: int = 0) -> tuple[HookedTransformer, CharTokenizer]:
    model, tok = build_planted_direction(seed)
    attn = model.blocks[0].attn
    for w in (attn.W_Q, attn.W_K, attn.W_V):
        w[DECOY_HEAD] = w[0]
    attn.W_O[DECOY_HEAD] = 0.0
    attn.W_O[DECOY_HEAD, 0] = DECOY_SCALE * decoy_direction(seed).to(attn.W_O.dtype)  # L0H0's value dim 0 is g
    model.cfg.model_name = f"toy-planted-direction-decoy-s{seed}"
    return model, tok


def register() -> None:
    from ..models.toy import register_toy

    register_toy("planted-direction-decoy", build_planted_direction_decoy,
                 "toy/planted-direction plus head L0H3 writing g along a second direction v of "
                 "blocks.1.hook_resid_pre that nothing downstream reads: g is decodable along v and along the used "
                 "direction u, but only u steers the answer (task `planted-direction`). Ground truth (u, v) in the "
                 "entry's meta.", meta=planted_direction_decoy_meta(0))


__all__ = ["DECOY_HEAD", "build_planted_direction_decoy", "decoy_direction", "planted_direction_decoy_meta",
           "register"]
