"""A planted *attention switch*: a head whose whole effect passes through a saturated downstream softmax.

Ground truth for AtP*'s QK fix (Kramár et al. 2024): exact patching of the selector head restores the
clean behaviour completely (normalised effect 1), but the gradient of the metric through the reader
head's attention pattern is ~e^-40 at the counterfactual input, so plain attribution patching scores
the selector ~0. AtP* recomputes the reader's softmax with the selector's patched write and must agree
with exact patching. Registered as `toy/planted-switch`.

Task (`PLANTED_SWITCH_TASK`): the prompt is a selector s in {p, q}, a letter u in a..d, a letter w in
e..h and '=', e.g. "pcf="; the answer is u when s = 'p' and w when s = 'q' ("pcf=" -> 'c'). The
counterfactual `flip_s` flips s (only position 0 changes; the answer moves from u to w, always a
different letter).

Construction (no training, no LayerNorm, attention-only, 3 layers of 2 heads of d_head 8, d_model 69 in
one-hot subspaces TOK 52 token dims, POS 8 position dims, SEL 1 dim, OUT 8 answer dims):
  L0H0  selector: attends from '=' to position 0 (score 20) and writes +1 (s = p) or -1 (s = q) into SEL.
  L2H0  reader: query at '=' = G SEL, keys +-G at positions 1 / 2 (score +-20 SEL there, 0 elsewhere):
        it attends to u's position when SEL = +1 and to w's when SEL = -1, saturated either way (weight
        1 - 2e-9); its value copies the letter there into OUT, read by the unembedding (logit L_LOGIT).
  every other head has zero weights (uniform attention, zero output: exactly no effect). Layer 1 is
        empty on purpose: with 3 layers a GradDrop-style average over layers no longer equals the
        effect (the ×(layers-1) scale bug), while a correct estimate still gives 1.
Exact normalised effects (counterfactual flip_s, denoising): L0H0 1, L2H0 1, L0H0.v 1 (the selector
reads s through its value input), L2H0.q 1 (the reader's query input), L2H0.k 0, L2H0.v 0 (the reader's
keys and values do not depend on s), everything else 0. Plain AtP: L0H0, L0H0.v and L2H0.q ~0, L2H0 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ..models.tokenizers import CharTokenizer
from .common import TOY_ALPHABET
from .planted import identity_io

FIRST, SECOND = "abcd", "efgh"
LETTERS = FIRST + SECOND
END_CHAR = "="
SCORE = 20.0     # attention logit of the selector on position 0, and of the reader on the selected slot
L_LOGIT = 6.0    # the reader's logit for the answer letter

PLANTED_SWITCH_TASK: dict[str, Any] = {
    "name": "planted-switch",
    "description": "Planted attention-switch task for toy/planted-switch: 'pcf=' -> 'c'. The selector s (p/q, "
                   "position 0) decides which letter is copied: u (position 1) for p, w (position 2) for q. "
                   "Ground truth in the model's registry metadata.",
    "variables": {
        "s": {"values": ["p", "q"], "description": "selector: which slot the reader head attends to"},
        "u": {"values": list(FIRST), "description": "the letter answered when s = p"},
        "w": {"values": list(SECOND), "description": "the letter answered when s = q"},
    },
    "mechanisms": {"y": {"expr": "u if s == 'p' else w", "description": "the selected letter"}},
    "templates": ["{s}{u}{w}" + END_CHAR],
    "answer": "{y}",
    "counterfactuals": [
        {"name": "flip_s", "kind": "resample", "variables": ["s"],
         "description": "the other selector: only position 0 changes, the answer moves from u to w or back"},
    ],
    "positions": {"S": {"variable": "s"}, "U": {"variable": "u"}, "W": {"variable": "w"}},
    "metric": "logit_diff",
    "default_n": 16,
}

N_LAYERS, N_HEADS, D_HEAD, N_CTX = 3, 2, 8, 8
_TOK_ID = {c: i for i, c in enumerate(TOY_ALPHABET)}
TOK = list(range(len(TOY_ALPHABET)))
POS = list(range(TOK[-1] + 1, TOK[-1] + 1 + N_CTX))
SEL = POS[-1] + 1
OUT = list(range(SEL + 1, SEL + 1 + len(LETTERS)))
D_MODEL = OUT[-1] + 1


def planted_switch_meta() -> dict[str, Any]:
    """Ground truth: exact normalised effects (flip_s, denoising) of every head output and of the reader's inputs."""
    effects = {f"L{l}H{h}": 0.0 for l in range(N_LAYERS) for h in range(N_HEADS)}
    effects.update({"L0H0": 1.0, "L2H0": 1.0})
    inputs = {f"L{l}H{h}.{k}": 0.0 for l in range(N_LAYERS) for h in range(N_HEADS) for k in "qkv"}
    inputs.update({"L0H0.v": 1.0, "L2H0.q": 1.0})  # the selector reads s through its value input
    return {"kind": "planted-switch", "task": PLANTED_SWITCH_TASK["name"], "metric": "logit_diff",
            "counterfactual": "flip_s", "selector": "L0H0", "reader": "L2H0",
            "exact_effects": effects, "exact_input_effects": inputs,
            "plain_atp": {"L0H0": 0.0, "L2H0.q": 0.0, "L2H0": 1.0},
            "expected": {"clean_logit_diff": L_LOGIT, "counterfactual_logit_diff": -L_LOGIT, "accuracy": 1.0},
            "constants": {"score": SCORE, "L": L_LOGIT}}


@torch.no_grad()
def build_planted_switch() -> tuple[HookedTransformer, CharTokenizer]:
    """`toy/planted-switch`: (model, tokenizer). Deterministic; no training."""
    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, d_head=D_HEAD, n_ctx=N_CTX, d_vocab=len(TOY_ALPHABET),
        act_fn="relu", normalization_type=None, positional_embedding_type="standard", attn_only=True,
        default_prepend_bos=False, model_name="toy-planted-switch", device="cpu")
    model = HookedTransformer(cfg, move_to_device=False)
    for p in model.parameters():
        p.zero_()
    identity_io(model, TOK, POS, OUT, [_TOK_ID[c] for c in LETTERS])
    a = math.sqrt(SCORE * math.sqrt(D_HEAD))  # TL divides q.k by sqrt(d_head): each side gets sqrt(SCORE sqrt(d))
    sel = model.blocks[0].attn
    sel.W_Q[0, TOK[_TOK_ID[END_CHAR]], 0] = a   # query only from '='
    sel.W_K[0, POS[0], 0] = a                    # key only at position 0
    sel.W_V[0, TOK[_TOK_ID["p"]], 0] = 1.0
    sel.W_V[0, TOK[_TOK_ID["q"]], 0] = -1.0
    sel.W_O[0, 0, SEL] = 1.0
    rd = model.blocks[2].attn
    rd.W_Q[0, SEL, 0] = a                        # q = a SEL
    rd.W_K[0, POS[1], 0] = a                     # k = +a at u's slot, -a at w's slot
    rd.W_K[0, POS[2], 0] = -a
    for i, c in enumerate(LETTERS):
        rd.W_V[0, TOK[_TOK_ID[c]], i] = 1.0
        rd.W_O[0, i, OUT[i]] = L_LOGIT
    model.eval()
    return model, CharTokenizer(TOY_ALPHABET)


def register() -> None:
    from ..models.toy import register_toy

    register_toy("planted-switch", build_planted_switch,
                 "planted attention switch for the `planted-switch` task ('pcf=' -> 'c'): L0H0 writes the selector, "
                 "L2H0 attends (saturated softmax) to the selected letter and copies it. Exact patching of L0H0 = 1, "
                 "plain AtP ~0. Ground truth in the entry's meta.", meta=planted_switch_meta())
