"""A planted *trace*: MLPs that compute known sparse features along a known path, for attribution graphs.

Ground truth for `methods.tracing` (issue 29): with the hand-set transcoders (`planted_trace_transcoders`, equal to
the true features) every edge of the attribution graph has a value one can derive by hand from the weights below,
the error nodes are 0, and the planted path is the top path to the answer's logit; a decoy latent fires with the
answer on the same prompts but has no path to any logit. Registered as `toy/planted-trace` (seed 0);
`build_planted_trace(seed)` permutes which MLP neuron (and so which transcoder latent) plays which role.

Task (`PLANTED_TRACE_TASK`): a digit d1 in 0..3, a letter x in a..d, a digit d2 and '=', e.g. "3b1="; the answer is
the letter of "pqrs" at x's place ("3b1=" -> 'q'). Counterfactual `resample_x` changes x (and the answer). x sits at
position 1, not 0: a position attends at least to itself, and position 0 sees nothing else, so a letter there would
move into MOVED at its own position too.

Construction (no LayerNorm, so the residual stream is exactly the sum of the writes; d_model 80 in one-hot
subspaces: TOK 52 token dims, POS 8 position dims, F0 4, MOVED 4, OUT 4, JUNK 8; 2 layers, 2 heads of d_head 8):
  embeddings  identities into TOK and POS; the unembedding reads OUT only: logit(answer_x) = resid[OUT_x].
  L0 attention  zero (uniform patterns, no output).
  MLP0        latent f0_x = relu(TOK_x): 1 on x's token, written to F0_x (weight 1); latent digit_d = relu(TOK_d)
              written to JUNK_d (nothing reads JUNK); and a linear part, S * TOK_x -> F0_x, as the neuron pair
              relu(S TOK_x) - relu(-S TOK_x): the transcoder's skip term W_skip[F0_x, TOK_x] = S.
  L1H0        the mover: the query of '=' (TOK '=' * a) meets the key of position 1 (POS_1 * a) with score
              a^2 / sqrt(d_head) = SCORE, every other key 0; its OV copies F0_x into MOVED_x (weight 1).
              At the last position of a T-token prompt: p = e^SCORE / (e^SCORE + T - 1) on position 1. Every
              other query is 0 (uniform attention): MOVED_x = (1 + S) / 2 at position 1 and (1 + S) / 3 at
              position 2, both below THETA, so the MLP1 latents fire at the last position only.
  MLP1        latent f1_x = relu(MOVED_x - THETA), written to OUT_x with weight L_LOGIT; the decoy latent
              decoy_x = relu(DECOY_GAIN (MOVED_x - THETA)), written to JUNK_{4+x}: it fires exactly when f1_x does
              (on the same prompts, DECOY_GAIN times louder), but nothing reads JUNK.
  L1H1        zero.
On a prompt with letter x (T tokens): f0_x = 1 at position 1; MOVED_x = p (1 + S) at the last position;
f1_x = p (1 + S) - THETA; decoy_x = DECOY_GAIN f1_x; logit(answer_x) = L_LOGIT f1_x, every other logit 0.
The direct effects (edges) of the attribution graph, by hand:
  token x @1 -> f0_x @1              1
  f0_x @1 -> f1_x @T-1               p          (through the mover, pattern frozen)
  token x @1 -> f1_x @T-1            S p        (through MLP0's skip term and the mover: no node in between)
  f0_x @1 -> decoy_x, token x @1 -> decoy_x: DECOY_GAIN times the two above
  token d @i -> digit_d @i           1
  f1_x @T-1 -> logit answer_x        L_LOGIT f1_x (1 - 1/d_vocab) demeaned; L_LOGIT f1_x as a logit difference
and every other edge 0; constants: -THETA into f1_x, -DECOY_GAIN THETA into decoy_x, 0 into the logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ..models.tokenizers import CharTokenizer
from .common import TOY_ALPHABET
from .planted import identity_io

LETTERS, DIGITS, ANSWERS = "abcd", "0123", "pqrs"
END_CHAR = "="
X_POS = 1           # where the letter sits
SCORE = 20.0        # the mover's attention logit on position 0 (others 0)
SKIP = 0.25         # S: MLP0's linear part, TOK_x -> F0_x
THETA = 0.7         # f1's threshold (above (1 + S) / 2: see the docstring)
L_LOGIT = 4.0       # f1's write to the answer's logit
DECOY_GAIN = 3.0    # the decoy is this many times louder than f1

PLANTED_TRACE_TASK: dict[str, Any] = {
    "name": "planted-trace",
    "description": "Planted-trace task for toy/planted-trace: '3b1=' -> 'q', the letter of 'pqrs' at the place of "
                   "the letter (a..d, position 1) in 'abcd'; the digits are distractors. Ground truth (the path "
                   "token -> MLP0 feature -> mover head -> MLP1 feature -> logit, and a decoy) in the model's "
                   "registry metadata.",
    "variables": {
        "x": {"values": list(LETTERS), "description": "the letter the answer is read from (position 1)"},
        "d1": {"values": list(DIGITS), "description": "distractor"},
        "d2": {"values": list(DIGITS), "description": "distractor"},
    },
    "mechanisms": {"y": {"lookup": dict(zip(LETTERS, ANSWERS)), "key": "x",
                         "description": "the letter of 'pqrs' at x's place in 'abcd'"}},
    "templates": ["{d1}{x}{d2}" + END_CHAR],
    "answer": "{y}",
    "counterfactuals": [
        {"name": "resample_x", "kind": "resample", "variables": ["x"],
         "description": "a different x: only position 1 changes, and the answer with it"},
    ],
    "positions": {"X": {"variable": "x"}},
    "metric": "logit_diff",
    "default_n": 16,
}

N_LAYERS, N_HEADS, D_HEAD, D_MLP, N_CTX = 2, 2, 8, 16, 8
N_LATENTS = 8  # each layer's transcoder: layer 0 f0_a..d and digit_0..3, layer 1 f1_a..d and decoy_a..d
_TOK = {c: i for i, c in enumerate(TOY_ALPHABET)}
TOK = list(range(len(TOY_ALPHABET)))
POS = list(range(TOK[-1] + 1, TOK[-1] + 1 + N_CTX))
F0 = list(range(POS[-1] + 1, POS[-1] + 5))
MOVED = list(range(F0[-1] + 1, F0[-1] + 5))
OUT = list(range(MOVED[-1] + 1, MOVED[-1] + 5))
JUNK = list(range(OUT[-1] + 1, OUT[-1] + 9))
D_MODEL = JUNK[-1] + 1  # 80


def latent_roles(seed: int = 0) -> dict[int, list[str]]:
    """Layer -> the role of each transcoder latent (and of the MLP neuron with the same index): 'f0:a', 'digit:0',
    'f1:a', 'decoy:a'. Seed 0 is the canonical order; other seeds permute it."""
    roles = {0: [f"f0:{x}" for x in LETTERS] + [f"digit:{d}" for d in DIGITS],
             1: [f"f1:{x}" for x in LETTERS] + [f"decoy:{x}" for x in LETTERS]}
    if seed:
        gen = torch.Generator().manual_seed(5_003 + seed)
        roles = {l: [r[i] for i in torch.randperm(N_LATENTS, generator=gen).tolist()] for l, r in roles.items()}
    return roles


def planted_trace_meta(seed: int = 0) -> dict[str, Any]:
    """Ground truth of `build_planted_trace(seed)`: latent roles, the planted path per letter, the decoys, the
    constants of the construction, and the hooks the transcoders read and write."""
    roles = latent_roles(seed)
    where = {r: (l, i) for l, rs in roles.items() for i, r in enumerate(rs)}
    path = {x: [{"node": "token", "position": X_POS, "token": x},
                {"node": "feature", "layer": 0, "latent": where[f"f0:{x}"][1], "position": X_POS},
                {"node": "feature", "layer": 1, "latent": where[f"f1:{x}"][1], "position": "last"},
                {"node": "logit", "token": a}] for x, a in zip(LETTERS, ANSWERS)}
    return {"kind": "planted-trace", "task": PLANTED_TRACE_TASK["name"], "metric": "logit_diff",
            "counterfactual": "resample_x", "roles": {str(l): r for l, r in roles.items()}, "path": path,
            "decoys": {x: {"layer": 1, "latent": where[f"decoy:{x}"][1], "position": "last"} for x in LETTERS},
            "mover": {"layer": 1, "head": 0},
            "transcoders": {str(l): {"hook_in": f"blocks.{l}.hook_mlp_in", "hook_out": f"blocks.{l}.hook_mlp_out",
                                     "width": N_LATENTS, "skip": l == 0} for l in range(N_LAYERS)},
            "constants": {"score": SCORE, "skip": SKIP, "theta": THETA, "L": L_LOGIT, "decoy_gain": DECOY_GAIN,
                          "d_vocab": len(TOY_ALPHABET)}}


def _weights(seed: int) -> dict[int, dict[str, torch.Tensor]]:
    """The transcoders' weights (the true features): layer -> W_enc [d, 8], b_enc, W_dec [8, d], b_dec, W_skip."""
    out = {}
    for l, roles in latent_roles(seed).items():
        W_enc, b_enc = torch.zeros(D_MODEL, N_LATENTS), torch.zeros(N_LATENTS)
        W_dec, W_skip = torch.zeros(N_LATENTS, D_MODEL), torch.zeros(D_MODEL, D_MODEL)
        for i, role in enumerate(roles):
            kind, v = role.split(":")
            if kind == "f0":
                W_enc[TOK[_TOK[v]], i] = 1.0
                W_dec[i, F0[LETTERS.index(v)]] = 1.0
            elif kind == "digit":
                W_enc[TOK[_TOK[v]], i] = 1.0
                W_dec[i, JUNK[DIGITS.index(v)]] = 1.0
            elif kind == "f1":
                W_enc[MOVED[LETTERS.index(v)], i], b_enc[i] = 1.0, -THETA
                W_dec[i, OUT[LETTERS.index(v)]] = L_LOGIT
            else:  # decoy
                W_enc[MOVED[LETTERS.index(v)], i], b_enc[i] = DECOY_GAIN, -DECOY_GAIN * THETA
                W_dec[i, JUNK[4 + LETTERS.index(v)]] = 1.0
        if l == 0:
            for j, x in enumerate(LETTERS):
                W_skip[F0[j], TOK[_TOK[x]]] = SKIP
        out[l] = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": torch.zeros(D_MODEL), "W_skip": W_skip}
    return out


@torch.no_grad()
def build_planted_trace(seed: int = 0) -> tuple[HookedTransformer, CharTokenizer]:
    """`toy/planted-trace` (seed 0) and its re-drawn layouts: (model, tokenizer). Deterministic; no training."""
    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, d_head=D_HEAD, d_mlp=D_MLP, n_ctx=N_CTX,
        d_vocab=len(TOY_ALPHABET), act_fn="relu", normalization_type=None, positional_embedding_type="standard",
        default_prepend_bos=False, model_name=f"toy-planted-trace-s{seed}", device="cpu")
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the global RNG alone
        model = HookedTransformer(cfg, move_to_device=False)
    for p in model.parameters():
        p.zero_()
    identity_io(model, TOK, POS, OUT, [_TOK[c] for c in ANSWERS])
    for l, w in _weights(seed).items():
        mlp = model.blocks[l].mlp
        mlp.W_in[:, :N_LATENTS], mlp.b_in[:N_LATENTS] = w["W_enc"], w["b_enc"]  # neuron i = latent i
        mlp.W_out[:N_LATENTS] = w["W_dec"]
        if l == 0:  # the linear part as neuron pairs relu(S t) - relu(-S t)
            for j, x in enumerate(LETTERS):
                plus, minus = N_LATENTS + 2 * j, N_LATENTS + 2 * j + 1
                mlp.W_in[TOK[_TOK[x]], plus], mlp.W_in[TOK[_TOK[x]], minus] = SKIP, -SKIP
                mlp.W_out[plus, F0[j]], mlp.W_out[minus, F0[j]] = 1.0, -1.0
    a = math.sqrt(SCORE * math.sqrt(D_HEAD))  # TL divides q.k by sqrt(d_head)
    mover = model.blocks[1].attn
    mover.W_Q[0, TOK[_TOK[END_CHAR]], 0] = a
    mover.W_K[0, POS[X_POS], 0] = a
    for j in range(len(LETTERS)):
        mover.W_V[0, F0[j], j] = 1.0
        mover.W_O[0, j, MOVED[j]] = 1.0
    model.eval()
    return model, CharTokenizer(TOY_ALPHABET)


def planted_trace_transcoders(seed: int = 0) -> dict[int, Any]:
    """Hand-set transcoders equal to the true features of `build_planted_trace(seed)`: layer -> a sae-lens
    `SkipTranscoder` reading blocks.L.hook_mlp_in (the stream; the model has no norm) and writing hook_mlp_out. They
    reproduce each MLP exactly (errors 0); `methods.tracing` takes this dict as it is, and `tc.save_model(dir)`
    writes the sae-lens directory `methods.features.load_transcoder` reads."""
    from sae_lens.saes.transcoder import SkipTranscoder, SkipTranscoderConfig

    out = {}
    for l, w in _weights(seed).items():
        with torch.random.fork_rng(devices=[]):
            tc = SkipTranscoder(SkipTranscoderConfig(d_in=D_MODEL, d_sae=N_LATENTS, d_out=D_MODEL,
                                                     apply_b_dec_to_input=False))
        tc.cfg.metadata.hook_name = f"blocks.{l}.hook_mlp_in"
        tc.cfg.metadata.model_name = f"toy/planted-trace{'' if not seed else f'@seed{seed}'}"
        with torch.no_grad():
            for name, t in w.items():
                getattr(tc, name).copy_(t)
        out[l] = tc.eval()
    return out


def register() -> None:
    from ..models.toy import register_toy

    register_toy("planted-trace", build_planted_trace,
                 "planted path for attribution graphs, task `planted-trace` ('3b1=' -> 'q'): token x -> MLP0 feature "
                 "f0_x -> mover head L1H0 -> MLP1 feature f1_x -> the answer's logit, and a decoy MLP1 feature that "
                 "fires with f1_x but reaches no logit. Hand-set transcoders: "
                 "mcp_interp.toymodels.planted_trace.planted_trace_transcoders(). Ground truth in the entry's meta.",
                 meta=planted_trace_meta(0))


__all__ = ["ANSWERS", "LETTERS", "PLANTED_TRACE_TASK", "build_planted_trace", "latent_roles", "planted_trace_meta",
           "planted_trace_transcoders", "register"]
