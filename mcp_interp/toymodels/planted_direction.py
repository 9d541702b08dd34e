"""A planted *direction*: a toy model whose task variable lives along a known, seeded direction.

Ground truth for distributed alignment search (DAS, docs/architecture.md §6-7): DAS with k = 1 at the planted
site must recover the direction (|cos| ~ 1) with held-out IIA ~ 1, a random direction must fail,
and full-vector patching must do worse than DAS because the site also carries a second variable.
Registered as `toy/planted-direction` (seed 0); `build_planted_direction(seed)` gives other seeds,
so a test can use a direction nobody tuned against.

Task (`PLANTED_DIRECTION_TASK`): the prompt is a letter x (a..h), a digit w (0..3), two distractor
digits and '=', e.g. "c204=". The binary variable g is 'lo' for x in a..d and 'hi' for e..h; the
answer is the w-th letter of "ijkl" when g is 'lo' and of "mnop" when 'hi' ("c204=" -> 'k'). The
answer depends on g and w, so interchanging g alone (DAS) and interchanging the whole residual
vector (which also carries w) give different answers whenever the source's w differs.

Construction (no training): 2 layers, 4 heads of d_head 8, d_mlp 8, no LayerNorm, d_model 81. First,
in a readable basis of one-hot subspaces (TOK 52 token dims, POS 8 position dims, G 1 dim, W 4 dims,
OUT 8 answer dims, JUNK 8 scratch dims):
  L0H0  attends from '=' to position 0 and writes +1 (g = 'lo') or -1 ('hi') into G;
  L0H1  attends from '=' to position 1 and writes one-hot(w) into W;
  L0H2  inert: random Q/K/V over the whole stream, writes only into JUNK (nothing reads JUNK), so
        the site carries input-dependent clutter that differs between base and source;
  MLP1  one ReLU neuron per (g, w): ReLU(s G + 2 W_w - 2) (s = +-1) is 1 for the matching pair and
        0 otherwise; it writes L_LOGIT to OUT of that pair's answer letter; W_U reads OUT only.
So at the site (`blocks.1.hook_resid_pre`, END position) g is exactly the coordinate G, and nothing
downstream reads any other direction for g. Then the whole residual basis is rotated by a Haar-
random orthogonal Q (seeded): every weight writing the stream is multiplied by Q^T on the right,
every weight reading it by Q on the left. Without LayerNorm the network computes exactly the same
function, but the variable's direction becomes u = Q e_G, a uniformly random unit vector, and no
standard-basis coordinate means anything (DAS cannot get lucky with an axis-aligned rotation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ..models.tokenizers import CharTokenizer
from .common import TOY_ALPHABET
from .planted import identity_io

LETTERS = "abcdefgh"
LO, HI = "abcd", "efgh"
ANSWERS = {"lo": "ijkl", "hi": "mnop"}
SIGN = {"lo": 1.0, "hi": -1.0}
END_CHAR = "="

PLANTED_DIRECTION_TASK: dict[str, Any] = {
    "name": "planted-direction",
    "description": "Planted-direction task for toy/planted-direction: 'c204=' -> 'k'. g = 'lo' for x in a..d, "
                   "'hi' for e..h; the answer is the w-th letter of 'ijkl' (lo) or 'mnop' (hi). g lives along "
                   "one known direction of blocks.1.hook_resid_pre at END (see the model's meta).",
    "variables": {
        "x": {"values": list(LETTERS), "description": "the letter whose group is g (position 0)"},
        "w": {"range": [0, 3], "description": "which letter of the group's answer row (position 1)"},
        "d1": {"range": [0, 9], "description": "distractor"},
        "d2": {"range": [0, 9], "description": "distractor"},
    },
    "mechanisms": {
        "g": {"expr": f"'lo' if x in '{LO}' else 'hi'", "description": "binary: the planted variable"},
        "y": {"expr": f"'{ANSWERS['lo']}'[w] if g == 'lo' else '{ANSWERS['hi']}'[w]", "description": "answer"},
    },
    "templates": ["{x}{w}{d1}{d2}" + END_CHAR],
    "answer": "{y}",
    "counterfactuals": [
        {"name": "flip_group", "kind": "assign",
         "assign": {"x": repr({a: b for a, b in zip(LETTERS, HI + LO)}) + "[x]"},
         "description": "x moves to the other group (a<->e, b<->f, ...): g flips, and the answer with it"},
        {"name": "resample_w", "kind": "resample", "variables": ["w"],
         "description": "a different w: the answer changes, g does not"},
        {"name": "resample_digits", "kind": "resample", "variables": ["d1", "d2"], "changes_answer": False},
    ],
    "positions": {"X": {"variable": "x"}, "W": {"variable": "w"}},
    "metric": "logit_diff",
    "default_n": 32,
}

# ---------------------------------------------------------------- sizes and readable layout

N_LAYERS, N_HEADS, D_HEAD, D_MLP, N_CTX = 2, 4, 8, 8, 8
D_VOCAB = len(TOY_ALPHABET)
_TOK = {c: i for i, c in enumerate(TOY_ALPHABET)}
TOK = list(range(D_VOCAB))                       # 52
POS = list(range(TOK[-1] + 1, TOK[-1] + 1 + N_CTX))  # 8
G = POS[-1] + 1                                   # 1: the planted variable
W = list(range(G + 1, G + 5))                     # 4: one-hot(w)
OUT = list(range(W[-1] + 1, W[-1] + 9))           # 8: answer letters i..p
JUNK = list(range(OUT[-1] + 1, OUT[-1] + 9))      # 8: scratch nothing reads
D_MODEL = JUNK[-1] + 1                            # 81
ANSWER_LETTERS = ANSWERS["lo"] + ANSWERS["hi"]

SITE_LAYER = 1
SITE_HOOK = f"blocks.{SITE_LAYER}.hook_resid_pre"
ATTN_LOGIT = 20.0  # mover heads' score on their source position (others 0): weight 1 - 1e-8
L_LOGIT = 6.0      # logit of the answer letter; every other logit is 0
INERT_STD = 0.3


def _cfg(seed: int) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, d_head=D_HEAD, d_mlp=D_MLP, n_ctx=N_CTX,
        d_vocab=D_VOCAB, act_fn="relu", normalization_type=None, positional_embedding_type="standard",
        default_prepend_bos=False, model_name=f"toy-planted-direction-s{seed}", device="cpu",
    )


def haar_rotation(seed: int, d: int = D_MODEL) -> torch.Tensor:
    """A Haar-random d x d orthogonal matrix, deterministic in seed (float64 QR, sign-fixed)."""
    gen = torch.Generator().manual_seed(10_007 * seed + 17)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def planted_direction_meta(seed: int = 0) -> dict[str, Any]:
    """Ground truth of `build_planted_direction(seed)`: the direction of g at the site, and more."""
    q = haar_rotation(seed)
    return {
        "kind": "planted-direction", "seed": seed, "task": PLANTED_DIRECTION_TASK["name"],
        "variable": "g", "values": dict(SIGN),
        "site": {"hook": SITE_HOOK, "layer": SITE_LAYER, "kind": "resid_pre", "position": "END", "head": None},
        # unit vector: residual . direction = +1 for g = 'lo', -1 for 'hi' (at the site, END)
        "direction": q[:, G].float().tolist(),
        "w_directions": q[:, W].T.float().tolist(),  # one-hot(w) coordinates, also at the site
        "d_model": D_MODEL,
        "expected": {
            "accuracy": 1.0, "das_k1_iia": 1.0,
            "random_rotation_iia": 0.0,  # a random direction leaves the base answer in place
            # full-vector patching also moves w: right only when the source's w equals the base's
            "full_vector_iia_fresh_sources": 0.25,
        },
    }


@torch.no_grad()
def _canonical(seed: int) -> HookedTransformer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HookedTransformer(_cfg(seed), move_to_device=False)
    for p in model.parameters():
        p.zero_()
    gen = torch.Generator().manual_seed(5_003 * seed + 11)
    identity_io(model, TOK, POS, OUT, [_TOK[c] for c in ANSWER_LETTERS])

    a0, m1 = model.blocks[0].attn, model.blocks[1].mlp
    a = math.sqrt(ATTN_LOGIT * math.sqrt(D_HEAD))  # TL divides q.k by sqrt(d_head)
    for head, src_pos in ((0, 0), (1, 1)):  # movers: query '=' -> key position src_pos
        a0.W_Q[head, TOK[_TOK[END_CHAR]], 0] = a
        a0.W_K[head, POS[src_pos], 0] = a
    for c in LETTERS:  # L0H0: value +-1 by group, written to G
        a0.W_V[0, TOK[_TOK[c]], 0] = SIGN["lo" if c in LO else "hi"]
    a0.W_O[0, 0, G] = 1.0
    for i in range(4):  # L0H1: one-hot(w) into W
        a0.W_V[1, TOK[_TOK[str(i)]], i] = 1.0
        a0.W_O[1, i, W[i]] = 1.0
    for Wt in (a0.W_Q, a0.W_K, a0.W_V):  # L0H2: inert clutter into JUNK
        Wt[2] = torch.randn(D_MODEL, D_HEAD, generator=gen) * INERT_STD
    a0.W_O[2][:, JUNK] = torch.randn(D_HEAD, len(JUNK), generator=gen) * INERT_STD * 3

    for gi, g in enumerate(("lo", "hi")):  # MLP1: one neuron per (g, w)
        for w in range(4):
            n = 4 * gi + w
            m1.W_in[G, n] = SIGN[g]
            m1.W_in[W[w], n] = 2.0
            m1.b_in[n] = -2.0
            m1.W_out[n, OUT[ANSWER_LETTERS.index(ANSWERS[g][w])]] = L_LOGIT
    return model


@torch.no_grad()
def _rotate_residual(model: HookedTransformer, q: torch.Tensor) -> None:
    """Re-express the residual stream in the basis h -> h Q^T (the function is unchanged)."""
    q = q.to(model.embed.W_E.dtype)

    def write(t: torch.Tensor) -> None:  # [..., d_model] rows written into the stream
        t.copy_(t @ q.T)

    def read(t: torch.Tensor) -> None:   # [..., d_model, k] reads from the stream
        t.copy_(q @ t)

    write(model.embed.W_E)
    write(model.pos_embed.W_pos)
    for blk in model.blocks:
        for Wt in (blk.attn.W_Q, blk.attn.W_K, blk.attn.W_V):
            read(Wt)
        write(blk.attn.W_O)
        write(blk.attn.b_O)
        read(blk.mlp.W_in)
        write(blk.mlp.W_out)
        write(blk.mlp.b_out)
    read(model.unembed.W_U)


def build_planted_direction(seed: int = 0) -> tuple[HookedTransformer, CharTokenizer]:
    """The planted-direction model for `seed` (direction in `planted_direction_meta(seed)`)."""
    model = _canonical(seed)
    _rotate_residual(model, haar_rotation(seed))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, CharTokenizer(TOY_ALPHABET)


def register() -> None:
    from ..models.toy import register_toy

    register_toy("planted-direction", build_planted_direction,
                 "planted-direction model for the `planted-direction` task ('c204=' -> 'k'): the binary "
                 "variable g lives along one seeded random direction of blocks.1.hook_resid_pre at END, which "
                 "is all downstream reads of it; the site also carries w and clutter. Ground truth (direction) "
                 "in the entry's meta; DAS ground truth.",
                 meta=planted_direction_meta(0))


__all__ = ["PLANTED_DIRECTION_TASK", "build_planted_direction", "haar_rotation", "planted_direction_meta",
           "register", "SITE_HOOK", "D_MODEL"]
