"""Planted *features*: a toy model whose residual stream at one site is a known sparse superposition.

Ground truth for SAEs and `find_features` (docs/architecture.md §6 "Features", §7): an SAE trained at the site must
recover the planted feature directions (mean over features of the max |cos| with any decoder row),
`find_features` must rank the variable's features first, and causal tests must find their effect and none
for the decoy, a feature correlated with the variable that nothing downstream reads. Registered as
`toy/planted-features` (seed 0); `build_planted_features(seed)` gives other seeds (other directions).

Task (`PLANTED_FEATURES_TASK`): the prompt is a letter x (a..h), a digit w (0..3), a letter d1 (q..z),
a character d2 (4..9 or one of "()[]"), a marker k ('!' when x is in {a, b, c, h}, else '?') and '=', e.g.
"c2s5!=". g is 'lo' for x in a..d and 'hi' for e..h; the answer is the w-th letter of "ijkl" (lo) or of "mnop"
(hi): "c2s5!=" -> 'k'.

Features (28 unit directions, `planted_features_meta(seed)["features"]`), each a property of one token:
  g=lo, g=hi  on x in a..d / e..h: the variable (read downstream);
  decoy       on the marker '!' (shown when x is in {a, b, c, h}): P(decoy | lo) = 3/4, P(decoy | hi) = 1/4
              (AUROC 0.75 for g), never read. It rides on its own token, so on a corpus of random tokens it
              occurs independently of g, and only the task's prompts correlate it with g;
  w=0..3      one per digit w (read downstream);
  d1=q..z, d2=4..)  one per distractor character (never read);
  eq          on '=' (never read).
The embedding of a token is the sum of its features; position embeddings are 0.
Layer 0 has one head with Q = K = 0, so every position attends uniformly to itself and everything before it;
its OV circuit is 6 x the identity on the feature space, so at END (6 tokens) it adds exactly the sum of the
prompt's token features, and at position p it adds 6/(p+1) times the sum so far: at every position the
residual at the site (`blocks.1.hook_resid_pre`) is a sparse non-negative combination of the 28 features.
MLP1 has one ReLU neuron per (g, w): ReLU(<g-feature, h> + <w-feature, h> - 1.5) = 0.5 for the matching pair,
writing 2 L_LOGIT to the answer letter's output dimension; W_U reads only those 8 output dims.

Geometry: d_model = 24 = a 16-dim feature space + 8 output dims, so 28 features > 24 dims. The 6 read
features (g=lo, g=hi, w=0..3) are orthonormal and span 6 dims; the 22 unread ones (decoy, distractors, eq)
are spread over the other 10 dims (a seeded low-coherence packing: 22 directions in 10 dims, max pairwise
|cos| in the meta), so the readout of the read features is exact and the decoy is never read. Then the whole
residual basis is rotated by a Haar-random orthogonal matrix (seeded, as in planted_direction): no feature is
axis-aligned.
"""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ..models.tokenizers import CharTokenizer
from .common import TOY_ALPHABET
from .planted_direction import haar_rotation

LETTERS = "abcdefgh"
LO, HI = "abcd", "efgh"
DECOY_LETTERS = "abch"
ANSWERS = {"lo": "ijkl", "hi": "mnop"}
D1_CHARS = "qrstuvwxyz"
D2_CHARS = "456789()[]"
END_CHAR = "="
DECOY_CHAR, BLANK_CHAR = "!", "?"

PLANTED_FEATURES_TASK: dict[str, Any] = {
    "name": "planted-features",
    "description": "Planted-features task for toy/planted-features: 'c2s5!=' -> 'k'. g = 'lo' for x in a..d, 'hi' "
                   "for e..h; the answer is the w-th letter of 'ijkl' (lo) or 'mnop' (hi). The residual stream at "
                   "blocks.1.hook_resid_pre is a known sparse superposition of 28 features (see the model's meta), "
                   "two of them carry g and a decoy correlated with g is never read.",
    "variables": {
        "x": {"values": list(LETTERS), "description": "the letter whose group is g (position 0)"},
        "w": {"range": [0, 3], "description": "which letter of the group's answer row (position 1)"},
        "d1": {"values": list(D1_CHARS), "description": "distractor"},
        "d2": {"values": list(D2_CHARS), "description": "distractor"},
    },
    "mechanisms": {
        "g": {"expr": f"'lo' if x in '{LO}' else 'hi'", "description": "binary: the planted variable"},
        "decoy": {"expr": f"'on' if x in '{DECOY_LETTERS}' else 'off'",
                  "description": "whether the decoy token is shown: correlated with g, never read downstream"},
        "k": {"expr": f"'{DECOY_CHAR}' if decoy == 'on' else '{BLANK_CHAR}'",
              "description": "the marker token: the decoy character (which carries the decoy feature) or a blank"},
        "y": {"expr": f"'{ANSWERS['lo']}'[w] if g == 'lo' else '{ANSWERS['hi']}'[w]", "description": "answer"},
    },
    "templates": ["{x}{w}{d1}{d2}{k}" + END_CHAR],
    "answer": "{y}",
    "counterfactuals": [
        {"name": "flip_group", "kind": "assign",
         "assign": {"x": repr({a: b for a, b in zip(LETTERS, HI + LO)}) + "[x]"},
         "description": "x moves to the other group (a<->e, b<->f, ...): g flips (and the decoy with it), "
                        "and the answer"},
        {"name": "resample_w", "kind": "resample", "variables": ["w"],
         "description": "a different w: the answer changes, g does not"},
        {"name": "resample_distractors", "kind": "resample", "variables": ["d1", "d2"], "changes_answer": False},
    ],
    "positions": {"X": {"variable": "x"}, "W": {"variable": "w"}},
    "metric": "logit_diff",
    "default_n": 32,
}

# ---------------------------------------------------------------- features and layout

FEATURES: list[str] = (["g=lo", "g=hi", "decoy"] + [f"w={i}" for i in range(4)]
                       + [f"d1={c}" for c in D1_CHARS] + [f"d2={c}" for c in D2_CHARS] + ["eq"])
READ = ["g=lo", "g=hi", "w=0", "w=1", "w=2", "w=3"]
UNREAD = [f for f in FEATURES if f not in READ]
D_FEAT, N_OUT = 16, 8
D_MODEL = D_FEAT + N_OUT  # 24 < 28 features
N_TOKENS = 6
SITE_LAYER = 1
SITE_HOOK = f"blocks.{SITE_LAYER}.hook_resid_pre"
L_LOGIT = 6.0
ANSWER_LETTERS = ANSWERS["lo"] + ANSWERS["hi"]
_TOK = {c: i for i, c in enumerate(TOY_ALPHABET)}


def token_features(ch: str) -> list[str]:
    """The planted features a token carries (its embedding is their sum)."""
    if ch in LETTERS:
        return [f"g={'lo' if ch in LO else 'hi'}"]
    if ch == DECOY_CHAR:
        return ["decoy"]
    if ch in "0123" and len(ch) == 1:
        return [f"w={ch}"]
    if ch in D1_CHARS:
        return [f"d1={ch}"]
    if ch in D2_CHARS:
        return [f"d2={ch}"]
    return ["eq"] if ch == END_CHAR else []


def _packing(n: int, d: int, seed: int, steps: int = 400) -> torch.Tensor:
    """n unit vectors in R^d with low mutual coherence (seeded gradient descent on sum cos^8)."""
    gen = torch.Generator().manual_seed(7_919 * seed + 3)
    v = torch.randn(n, d, generator=gen, dtype=torch.float64)
    v.requires_grad_(True)
    opt = torch.optim.Adam([v], lr=0.02)
    with torch.enable_grad():
        for _ in range(steps):
            u = torch.nn.functional.normalize(v, dim=1)
            g = u @ u.T - torch.eye(n, dtype=torch.float64)
            loss = (g ** 8).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return torch.nn.functional.normalize(v.detach(), dim=1)


def canonical_directions(seed: int) -> torch.Tensor:
    """[28, D_MODEL] feature directions before the rotation: read features on axes 0..5, unread packed in 6..15."""
    dirs = torch.zeros(len(FEATURES), D_MODEL, dtype=torch.float64)
    for i, f in enumerate(READ):
        dirs[FEATURES.index(f), i] = 1.0
    packed = _packing(len(UNREAD), D_FEAT - len(READ), seed)
    for j, f in enumerate(UNREAD):
        dirs[FEATURES.index(f), len(READ):D_FEAT] = packed[j]
    return dirs


def feature_directions(seed: int = 0) -> torch.Tensor:
    """[28, D_MODEL] unit feature directions at the site of `build_planted_features(seed)` (rows as FEATURES)."""
    return (canonical_directions(seed) @ haar_rotation(seed, D_MODEL).T).float()


def planted_features_meta(seed: int = 0) -> dict[str, Any]:
    canon = canonical_directions(seed)
    unread = canon[[FEATURES.index(f) for f in UNREAD]]
    coh = (unread @ unread.T - torch.eye(len(UNREAD), dtype=torch.float64)).abs().max()
    return {
        "kind": "planted-features", "seed": seed, "task": PLANTED_FEATURES_TASK["name"], "variable": "g",
        "site": {"hook": SITE_HOOK, "layer": SITE_LAYER, "kind": "resid_pre", "position": "END", "head": None},
        "d_model": D_MODEL, "n_features": len(FEATURES),
        "features": FEATURES, "directions": feature_directions(seed).tolist(),
        "variable_features": ["g=lo", "g=hi"], "decoy": "decoy", "read": READ,
        "unread_max_abs_cos": round(float(coh), 4),
        "expected": {"accuracy": 1.0, "decoy_auroc_for_g": 0.75, "decoy_effect": 0.0},
    }


def _cfg(seed: int) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=2, d_model=D_MODEL, n_heads=1, d_head=D_FEAT, d_mlp=8, n_ctx=8, d_vocab=len(TOY_ALPHABET),
        act_fn="relu", normalization_type=None, positional_embedding_type="standard", default_prepend_bos=False,
        model_name=f"toy-planted-features-s{seed}", device="cpu")


@torch.no_grad()
def build_planted_features(seed: int = 0) -> tuple[HookedTransformer, CharTokenizer]:
    """The planted-features model for `seed` (its feature directions: `feature_directions(seed)`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HookedTransformer(_cfg(seed), move_to_device=False)
    for p in model.parameters():
        p.zero_()
    q = haar_rotation(seed, D_MODEL)
    dirs = canonical_directions(seed) @ q.T                      # [28, D_MODEL], rotated
    basis = q[:, :D_FEAT]                                         # the feature space, rotated: [D_MODEL, 16]
    out = q[:, D_FEAT:]                                           # the 8 output dims, rotated
    fidx = {f: i for i, f in enumerate(FEATURES)}
    for ch, t in _TOK.items():
        for f in token_features(ch):
            model.embed.W_E[t] += dirs[fidx[f]].float()
    a0 = model.blocks[0].attn
    a0.W_V[0] = basis.float()                                     # read the feature space...
    a0.W_O[0] = (N_TOKENS * basis.T).float()                      # ... and write it back, x6
    m1 = model.blocks[1].mlp
    for gi, g in enumerate(("lo", "hi")):
        for w in range(4):
            n = 4 * gi + w
            m1.W_in[:, n] = (dirs[fidx[f"g={g}"]] + dirs[fidx[f"w={w}"]]).float()
            m1.b_in[n] = -1.5
            j = ANSWER_LETTERS.index(ANSWERS[g][w])
            m1.W_out[n] = (2 * L_LOGIT * out[:, j]).float()
    for j, c in enumerate(ANSWER_LETTERS):
        model.unembed.W_U[:, _TOK[c]] = out[:, j].float()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, CharTokenizer(TOY_ALPHABET)


def register() -> None:
    from ..models.toy import register_toy

    register_toy("planted-features", build_planted_features,
                 "planted-features model for the `planted-features` task ('c2s5!=' -> 'k'): the residual stream at "
                 "blocks.1.hook_resid_pre is a sparse superposition of 28 known features in 24 dims; g=lo / g=hi "
                 "carry the variable g, a decoy correlated with g is never read. SAE / find_features ground truth "
                 "(directions in the entry's meta).",
                 meta=planted_features_meta(0))
    # The same features in another basis (another rotation and packing): with seed 0, a planted pair of models for
    # compare_features (every feature shared, the read ones through identical MLP neurons).
    register_toy("planted-features-s1", lambda: build_planted_features(1),
                 "planted-features model, seed 1: the same 28 features and task as toy/planted-features in another "
                 "basis (another Haar rotation and packing of the unread features); with toy/planted-features, a "
                 "planted pair for compare_features.", meta=planted_features_meta(1))


__all__ = ["FEATURES", "PLANTED_FEATURES_TASK", "SITE_HOOK", "build_planted_features", "feature_directions",
           "planted_features_meta", "register", "token_features"]
