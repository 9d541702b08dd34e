"""Planted-circuit models: weights set by hand, so which components matter is known by construction.

They are the ground truth that attribution methods are graded against (docs/architecture.md §7): exact patching
must recover the circuit, and each cheap method must be shown failing on the decoy built to fool
it. Registered as `toy/planted-<regime>` for the regimes in `PLANTED_REGIMES`.

Task (`PLANTED_TASK`, one spec for all regimes): the prompt is a letter x in a..h, three digits and
'=', e.g. "c394=", and the answer is the letter after x (cyclic: h -> a), e.g. 'd'. The digits are
distractors. Counterfactual `resample_x` changes x (only position 0 changes, and the answer too).

Architecture (all regimes): 2 layers, 4 heads of d_head 8, MLPs of 32 ReLU neurons, no LayerNorm,
learned-style absolute positions, d_model 96, `CharTokenizer(TOY_ALPHABET)`. No LayerNorm means the
residual stream is exactly the sum of the component outputs, so every weight below has a readable
effect. The residual stream is split into named one-hot subspaces:

    TOK    one dim per vocabulary token (the embedding is the identity into TOK)
    POS    one dim per position (the positional embedding is the identity into POS)
    MOVED  one dim per letter a..h: the mover head writes x here
    DEC    one dim per letter: decoy heads write x here
    CAN    one dim per letter: the cancelling pair writes +-A one-hot(x) here
    OUT    one dim per letter: the unembedding reads only OUT (OUT_j -> logit of letter j)
    JUNK   scratch space that nothing reads: inert components write only here

The circuit (every regime): L0H0 ("mover") attends from '=' to position 0 and copies x into MOVED;
MLP1 maps MOVED_x to OUT_succ(x) with one ReLU neuron per letter. Logit difference (answer vs the
counterfactual answer) is +L on clean inputs and -L on counterfactual ones. Every other head and
every other MLP neuron is "inert": small random weights (fixed seed) reading the distractor digits and
positions and writing only into JUNK, so its activations vary with the digits but it has exactly no
effect on the logits (and it does not change under resample_x).

Regimes and their decoys (see `_build` for the weights and why they are set as they are):
  clean             the circuit alone.
  correlated-decoy  L0H1 copies x (3x louder than the mover) into DEC, and MLP0 turns DEC into a
                    one-hot of x in JUNK. Both are perfectly correlated with the answer, and have the
                    largest activation differences in the model, but nothing reads DEC or JUNK:
                    exact effect 0, gradient 0. Fools activation-difference / probing / correlation
                    scores; gradient-based scores and patching give 0.
  saturated-decoy   L0H1 copies x into DEC; MLP1 has one extra ReLU neuron per letter reading DEC
                    with gain K and bias -(K - eps), writing W to OUT_succ(v). When v = x the neuron
                    sits eps above its threshold (active, slope K); when v != x it is far below
                    (flat). So the gradient of the metric w.r.t. L0H1 is large (W*K) at both the
                    clean and the counterfactual input, but moving x there and back only changes the
                    neuron outputs by eps: exact effect 2*W*eps ~ 0, while attribution patching,
                    gradient and gradient x activation give ~W*K, more than the real circuit.
                    (Integrated gradients integrates along the path and gets it right.)
  cancelling-pair   L0H2 and L0H3 both attend to position 0 and write +A and -A times one-hot(x)
                    into CAN, which MLP1 reads through ReLUs thresholded at A/2 (one per letter,
                    writing to OUT_succ(v)). In the unpatched model CAN = 0, every such neuron sits
                    below threshold and the gradient through the pair is exactly 0 at x, at x' and
                    along the straight path between them; but patching either member alone makes
                    CAN = +-A(e_x - e_x') and moves the logit difference by +-2L (effect +-1.0).
                    Each member is causally important on its own, and every gradient-based method
                    (AtP, AtP*, gradient, gradient x activation, integrated gradients, EAP, EAP-IG)
                    scores both 0; patching both together does nothing, so the minimal faithful
                    circuit is still L0H0 -> MLP1.

Seeds: `build_planted(regime, seed)` permutes which layer-0 heads play which role and redraws the
inert weights, so a method cannot have learned the layout; seed 0 is the registered layout below.

Ground truth: `planted_meta(regime, seed)` (also the registry entry's `meta`). Components (`COMPONENTS`)
are built from (layer, head) / layer, their names and hooks rendered in the core Site vocabulary
(`Site("z", l, head=h)`, `Site("mlp_out", l)` of methods.core.sites; never parsed back):
`{"name": "L0H0", "hook": "blocks.0.attn.hook_z", "layer": 0, "head": 0, "kind": "head"}` or
`{"name": "MLP1", "hook": "blocks.1.hook_mlp_out", "layer": 1, "head": None, "kind": "mlp"}`;
`meta["circuit"]` is the set whose joint removal kills the behaviour (and which alone reproduces it),
`meta["decoys"]` components with ~0 exact effect that fool a named cheap method, `meta["cancelling_pairs"]`
pairs with large individual but ~0 joint effect, `meta["inert"]` the rest, and `meta["components"]` all
ten with a `label`. `meta["important"]` lists the components whose single-component exact patching
effect is non-negligible (circuit and cancelling members): the positives of the attribution AUROC.
`meta["important_edges"]` does the same for edges `sender->receiver` (senders embed/LxHy/MLPx,
receivers LxHy.q|k|v, MLPx, logits).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ..models.tokenizers import CharTokenizer
from .common import TOY_ALPHABET

PLANTED_REGIMES = ("clean", "correlated-decoy", "saturated-decoy", "cancelling-pair")

DOMAIN = "abcdefgh"  # values of x, and of the answer
SUCC = {c: DOMAIN[(i + 1) % len(DOMAIN)] for i, c in enumerate(DOMAIN)}
DIGITS = "0123456789"
END_CHAR = "="

PLANTED_TASK: dict[str, Any] = {
    "name": "planted",
    "description": "Planted-circuit task for the toy/planted-* models: 'c394=' -> 'd', the letter after the "
                   "first character (a..h, cyclic); the three digits are distractors. Ground truth per model "
                   "in the model's registry metadata.",
    "variables": {
        "x": {"values": list(DOMAIN), "description": "the letter the answer is computed from (position 0)"},
        "d1": {"values": list(DIGITS), "description": "distractor"},
        "d2": {"values": list(DIGITS), "description": "distractor"},
        "d3": {"values": list(DIGITS), "description": "distractor"},
    },
    "mechanisms": {"y": {"lookup": dict(SUCC), "key": "x", "description": "the letter after x"}},
    "templates": ["{x}{d1}{d2}{d3}" + END_CHAR],
    "answer": "{y}",
    "counterfactuals": [
        {"name": "resample_x", "kind": "resample", "variables": ["x"],
         "description": "a different x: only position 0 changes, and the answer with it"},
        {"name": "resample_digits", "kind": "resample", "variables": ["d1", "d2", "d3"], "changes_answer": False,
         "description": "new distractor digits: the answer is unchanged"},
    ],
    "positions": {"X": {"variable": "x"}},
    "metric": "logit_diff",
    "default_n": 32,
}
# One task serves every regime (register it once); keyed by regime for symmetry with the models.
PLANTED_TASKS: dict[str, dict[str, Any]] = {r: PLANTED_TASK for r in PLANTED_REGIMES}

# ---------------------------------------------------------------- sizes and residual layout

N_LAYERS, N_HEADS, D_HEAD, D_MLP, N_CTX = 2, 4, 8, 32, 8
D_VOCAB = len(TOY_ALPHABET)
_TOK_ID = {c: i for i, c in enumerate(TOY_ALPHABET)}
_NL = len(DOMAIN)

TOK = list(range(0, D_VOCAB))                           # 52 dims
POS = list(range(TOK[-1] + 1, TOK[-1] + 1 + N_CTX))      # 8
MOVED = list(range(POS[-1] + 1, POS[-1] + 1 + _NL))      # 8
DEC = list(range(MOVED[-1] + 1, MOVED[-1] + 1 + _NL))    # 8
CAN = list(range(DEC[-1] + 1, DEC[-1] + 1 + _NL))        # 8
OUT = list(range(CAN[-1] + 1, CAN[-1] + 1 + _NL))        # 8
JUNK = list(range(OUT[-1] + 1, OUT[-1] + 1 + 12))        # 12
D_MODEL = JUNK[-1] + 1                                    # 104

# ---------------------------------------------------------------- constants of the construction

ATTN_LOGIT = 20.0  # attention score of the mover-style heads on position 0 (others get 0): weight 1 - 4e-9
L_LOGIT = 6.0      # the circuit's logit for the answer: clean logit diff +L, counterfactual -L
DECOY_GAIN = 3.0   # correlated decoy: its z is 3 one-hot(x) (louder than the mover's 1 one-hot(x))
SAT_K = 10.0       # saturated decoy: gain of the near-threshold neurons
SAT_EPS = 0.02     # ... how far above threshold the neuron of x sits (its whole dynamic range)
SAT_W = 2.0        # ... their output weight: gradient W*K = 20, exact effect 2*W*eps = 0.08
CANCEL_A = 1.0     # cancelling pair: each writes +-A one-hot(x) into CAN ...
CANCEL_THETA = 0.5  # ... read by ReLU(CAN_v - theta) neurons ...
CANCEL_W = 2 * L_LOGIT / (CANCEL_A - CANCEL_THETA)  # ... writing W to OUT_succ(v): one member alone = +-2L
INERT_STD = 0.3    # inert components' random weights
INERT_SEED = 1234


def _unit(layer: int, head: int | None = None) -> dict[str, Any]:
    """A head's output (`head` given) or an MLP's output, as meta describes components. Name and hook are
    those of the core `Site("z", layer, head=head)` / `Site("mlp_out", layer)`; they are rendered here because
    toymodels may not import methods (tests/test_toy_models.py checks that the two agree)."""
    if head is None:
        return {"name": f"MLP{layer}", "hook": f"blocks.{layer}.hook_mlp_out", "layer": layer, "head": None,
                "kind": "mlp"}
    return {"name": f"L{layer}H{head}", "hook": f"blocks.{layer}.attn.hook_z", "layer": layer, "head": head,
            "kind": "head"}


# Every head of every layer, then every MLP: the order of ALL_COMPONENTS and meta["components"].
COMPONENTS = [_unit(l, h) for l in range(N_LAYERS) for h in range(N_HEADS)] + [_unit(l) for l in range(N_LAYERS)]
ALL_COMPONENTS = [c["name"] for c in COMPONENTS]


def role_heads(seed: int = 0) -> dict[str, int]:
    """Which layer-0 head plays which role: the identity for seed 0, a seeded permutation otherwise."""
    order = list(range(N_HEADS))
    if seed:
        order = torch.randperm(N_HEADS, generator=torch.Generator().manual_seed(10_007 + seed)).tolist()
    return dict(zip(("mover", "decoy", "plus", "minus"), order))


def planted_meta(regime: str, seed: int = 0) -> dict[str, Any]:
    """Ground truth for `toy/planted-<regime>` built with `seed` (see the module docstring)."""
    if regime not in PLANTED_REGIMES:
        raise ValueError(f"unknown planted regime {regime!r}; one of {PLANTED_REGIMES}")
    units = {r: _unit(0, h) for r, h in role_heads(seed).items()}
    mover, decoy, plus, minus = (units[r]["name"] for r in ("mover", "decoy", "plus", "minus"))
    mlp0, mlp1 = _unit(0), _unit(1)
    roles = {mover: ("circuit", "mover: attends from '=' to position 0 and copies x into MOVED"),
             mlp1["name"]: ("circuit", "mapper: one ReLU neuron per letter, MOVED_x -> +L on the logit of succ(x)")}
    decoys: list[dict[str, Any]] = []
    pairs: list[list[dict[str, Any]]] = []
    sat = SAT_W * SAT_EPS if regime == "saturated-decoy" else 0.0
    span = 2 * (L_LOGIT + sat)  # m(x) - m(x'): the denominator of every normalised effect
    # Edges with an effect of their own: x enters the mover through its value input, and so on.
    edges = [f"embed->{mover}.v", f"{mover}->{mlp1['name']}", f"{mlp1['name']}->logits"]
    if regime == "correlated-decoy":
        roles[decoy] = ("decoy", "copies x (3x the mover's amplitude) into DEC, which nothing reads")
        roles[mlp0["name"]] = ("decoy", "one-hot of x from DEC into JUNK, which nothing reads")
        for u in (units["decoy"], mlp0):
            decoys.append({**u, "role": roles[u["name"]][1], "exact_effect": 0.0, "linear_estimate": 0.0,
                           "fools": ["activation difference", "correlation / probing"]})
    elif regime == "saturated-decoy":
        roles[decoy] = ("decoy", "copies x into DEC; MLP1 reads DEC through near-threshold ReLUs "
                                 "(gain K, dynamic range eps): large gradient, ~0 effect")
        roles[mlp1["name"]] = ("circuit", roles[mlp1["name"]][1] + "; also holds the decoy's near-threshold neurons")
        decoys.append({**units["decoy"], "role": roles[decoy][1],
                       "exact_effect": 2 * SAT_W * SAT_EPS / span, "linear_estimate": SAT_W * SAT_K / span,
                       "fools": ["attribution patching (AtP, AtP*)", "gradient", "gradient x activation", "EAP"]})
    elif regime == "cancelling-pair":
        roles[plus] = ("cancelling", "writes +A one-hot(x) into CAN, read by thresholded ReLUs in MLP1")
        roles[minus] = ("cancelling", "writes -A one-hot(x) into CAN, cancelling the other member exactly")
        pairs.append([{**units[r], "role": roles[units[r]["name"]][1], "effect_alone": sign * 2 * L_LOGIT / span,
                       "fools": ["every gradient-based method (zero gradient at x, x' and between)"]}
                      for r, sign in (("plus", 1.0), ("minus", -1.0))])
        edges += [f"embed->{plus}.v", f"embed->{minus}.v", f"{plus}->{mlp1['name']}", f"{minus}->{mlp1['name']}"]
    components = []
    for u in COMPONENTS:
        label, role = roles.get(u["name"], ("inert", "random weights writing only into JUNK: exactly no effect"))
        components.append({**u, "label": label, "role": role})
    circuit = [c for c in components if c["label"] == "circuit"]
    return {
        "kind": "planted", "regime": regime, "seed": seed, "task": PLANTED_TASK["name"],
        "metric": "logit_diff", "counterfactual": "resample_x",
        "expected": {"clean_logit_diff": L_LOGIT + sat, "counterfactual_logit_diff": -(L_LOGIT + sat),
                     "accuracy": 1.0},
        # Effects below are normalised patching effects on counterfactual resample_x:
        # noising (m(x) - m(x with c from x')) / (m(x) - m(x')), denoising (m(x' with c from x) - m(x')) /
        # (m(x) - m(x')); the two coincide for these models. linear_estimate is what attribution
        # patching ((a(x) - a(x')) . dm/da) gives. Circuit components: 1.0 each (0.993 with the
        # saturated decoy's eps), inert: exactly 0.
        "effect_convention": "normalised: 1.0 = the whole clean-vs-counterfactual logit difference",
        "circuit": circuit,
        "important": [c["name"] for c in components if c["label"] in ("circuit", "cancelling")],
        "important_edges": edges,
        "decoys": decoys,
        "cancelling_pairs": pairs,
        "inert": [c for c in components if c["label"] == "inert"],
        "components": components,
        "constants": {"attn_logit": ATTN_LOGIT, "L": L_LOGIT, "decoy_gain": DECOY_GAIN, "sat_K": SAT_K,
                      "sat_eps": SAT_EPS, "sat_W": SAT_W, "cancel_A": CANCEL_A, "cancel_theta": CANCEL_THETA,
                      "cancel_W": CANCEL_W},
    }


# ---------------------------------------------------------------- construction

def _cfg(regime: str) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS, d_head=D_HEAD, d_mlp=D_MLP, n_ctx=N_CTX,
        d_vocab=D_VOCAB, act_fn="relu", normalization_type=None, positional_embedding_type="standard",
        attn_only=False, default_prepend_bos=False, model_name=f"toy-planted-{regime}", device="cpu",
    )


def _mover_qk(attn: Any, head: int) -> None:
    """Query from the '=' token, key from position 0: score ATTN_LOGIT on position 0 at the final
    position and 0 everywhere else (TL divides q.k by sqrt(d_head), so each side gets sqrt of
    ATTN_LOGIT*sqrt(d_head)). Other query positions get all-zero scores (uniform attention), which
    is harmless: only the final position is read out."""
    a = math.sqrt(ATTN_LOGIT * math.sqrt(D_HEAD))
    attn.W_Q[head, TOK[_TOK_ID[END_CHAR]], 0] = a
    attn.W_K[head, POS[0], 0] = a


def _copy_letters_v(attn: Any, head: int, gain: float) -> None:
    """V: letter i (token) -> gain * e_i in head space, so z = gain * one-hot(x) at the final position.
    Digits and '=' map to 0."""
    for i, c in enumerate(DOMAIN):
        attn.W_V[head, TOK[_TOK_ID[c]], i] = gain


# What inert components read: the distractor digits and the positions. resample_x leaves both
# unchanged, so inert components are identical on x and x' (a method that flags them flags noise),
# while resample_digits moves them (they are not constant).
_INERT_READ = [TOK[_TOK_ID[d]] for d in DIGITS] + POS


def _inert_head(attn: Any, head: int, gen: torch.Generator) -> None:
    """Random Q, K, V reading the digits and positions; O writes only into JUNK."""
    for W in (attn.W_Q, attn.W_K, attn.W_V):
        W[head, _INERT_READ] = torch.randn(len(_INERT_READ), D_HEAD, generator=gen) * INERT_STD
    attn.W_O[head, :, JUNK] = torch.randn(D_HEAD, len(JUNK), generator=gen) * INERT_STD


def _inert_neurons(mlp: Any, neurons: range, gen: torch.Generator) -> None:
    """Random input weights from the digits and positions, output only into JUNK."""
    for n in neurons:
        mlp.W_in[_INERT_READ, n] = torch.randn(len(_INERT_READ), generator=gen) * INERT_STD
        mlp.b_in[n] = float(torch.randn(1, generator=gen)) * INERT_STD
        mlp.W_out[n, JUNK] = torch.randn(len(JUNK), generator=gen) * INERT_STD


@torch.no_grad()
def identity_io(model: HookedTransformer, tok: list[int], pos: list[int], out: list[int], answers: list[int]) -> None:
    """Token and positional embeddings as identities into the `tok` / `pos` dims (so every residual dimension
    means one thing); the unembedding reads only `out`: logit(answers[j]) = resid[out[j]], every other 0."""
    for t, d in enumerate(tok):
        model.embed.W_E[t, d] = 1.0
    for p, d in enumerate(pos):
        model.pos_embed.W_pos[p, d] = 1.0
    for j, t in enumerate(answers):
        model.unembed.W_U[out[j], t] = 1.0


@torch.no_grad()
def _build(regime: str, seed: int = 0) -> HookedTransformer:
    if regime not in PLANTED_REGIMES:
        raise ValueError(f"unknown planted regime {regime!r}; one of {PLANTED_REGIMES}")
    model = HookedTransformer(_cfg(regime), move_to_device=False)
    for p in model.parameters():
        p.zero_()
    gen = torch.Generator().manual_seed(INERT_SEED + seed)  # inert weights: fixed per (regime, seed)
    rh = role_heads(seed)

    identity_io(model, TOK, POS, OUT, [_TOK_ID[c] for c in DOMAIN])

    a0, m0 = model.blocks[0].attn, model.blocks[0].mlp
    a1, m1 = model.blocks[1].attn, model.blocks[1].mlp

    # --- the circuit (all regimes)
    # Mover: z = one-hot(x) at '=', written to MOVED.
    mover = rh["mover"]
    _mover_qk(a0, mover)
    _copy_letters_v(a0, mover, 1.0)
    for i in range(_NL):
        a0.W_O[mover, i, MOVED[i]] = 1.0
    # MLP1 mapper, neurons 0..7: h_i = ReLU(2 MOVED_i - 1) is 1 for i = x and 0 otherwise (the -1 bias
    # makes it a clean threshold at 0.5, robust to the mover's 4e-9 leakage); it writes L to OUT_succ(i).
    for i, c in enumerate(DOMAIN):
        m1.W_in[MOVED[i], i] = 2.0
        m1.b_in[i] = -1.0
        m1.W_out[i, OUT[DOMAIN.index(SUCC[c])]] = L_LOGIT
    used1 = _NL  # MLP1 neurons in use so far

    # --- regime-specific components
    heads0 = {mover}
    decoy = rh["decoy"]
    if regime == "correlated-decoy":
        # Decoy head: same attention as the mover, z = 3 one-hot(x) (largest activation difference in
        # the model), W_O scaled by 1/3 so DEC = one-hot(x). Nothing reads DEC except MLP0 below.
        _mover_qk(a0, decoy)
        _copy_letters_v(a0, decoy, DECOY_GAIN)
        for i in range(_NL):
            a0.W_O[decoy, i, DEC[i]] = 1.0 / DECOY_GAIN
        heads0.add(decoy)
        # MLP0 neurons 0..7: ReLU(2 DEC_i - 1) = one-hot(x) at '=', written with gain 3 into JUNK: a
        # second correlated decoy whose output no one reads.
        for i in range(_NL):
            m0.W_in[DEC[i], i] = 2.0
            m0.b_in[i] = -1.0
            m0.W_out[i, JUNK[i]] = DECOY_GAIN
        _inert_neurons(m0, range(_NL, D_MLP), gen)
    else:
        _inert_neurons(m0, range(D_MLP), gen)

    if regime == "saturated-decoy":
        # Decoy head: DEC = one-hot(x) at '='.
        _mover_qk(a0, decoy)
        _copy_letters_v(a0, decoy, 1.0)
        for i in range(_NL):
            a0.W_O[decoy, i, DEC[i]] = 1.0
        heads0.add(decoy)
        # MLP1 neurons 8..15: g_v = ReLU(K DEC_v - (K - eps)), written with weight W to OUT_succ(v).
        # DEC_v = 1 (v = x): pre-activation +eps, active, slope K -> d metric / d DEC_v = +-W K.
        # DEC_v = 0 (v != x): pre-activation -(K - eps), flat.
        # Patching x -> x' turns g_x from eps to 0 and g_x' from 0 to eps: the logit difference moves
        # by only 2 W eps, while the first-order estimate (a - a') . grad is W K at either endpoint.
        for i, c in enumerate(DOMAIN):
            n = used1 + i
            m1.W_in[DEC[i], n] = SAT_K
            m1.b_in[n] = -(SAT_K - SAT_EPS)
            m1.W_out[n, OUT[DOMAIN.index(SUCC[c])]] = SAT_W
        used1 += _NL

    if regime == "cancelling-pair":
        # The pair: same attention and values as the mover; O writes +A / -A one-hot(x) into CAN.
        # Both compute identical z (same weights), so CAN is exactly 0 in the unpatched model.
        for h, sign in ((rh["plus"], 1.0), (rh["minus"], -1.0)):
            _mover_qk(a0, h)
            _copy_letters_v(a0, h, 1.0)
            for i in range(_NL):
                a0.W_O[h, i, CAN[i]] = sign * CANCEL_A
            heads0.add(h)
        # MLP1 neurons 8..15: c_v = ReLU(CAN_v - theta) -> W on OUT_succ(v). At CAN = 0 they sit at
        # -theta: flat, zero gradient. One member patched alone gives CAN_v = +-A on x or x'.
        for i, c in enumerate(DOMAIN):
            n = used1 + i
            m1.W_in[CAN[i], n] = 1.0
            m1.b_in[n] = -CANCEL_THETA
            m1.W_out[n, OUT[DOMAIN.index(SUCC[c])]] = CANCEL_W
        used1 += _NL

    # --- everything else is inert (random, writes only into JUNK)
    for h in range(N_HEADS):
        if h not in heads0:
            _inert_head(a0, h, gen)
        _inert_head(a1, h, gen)
    _inert_neurons(m1, range(used1, D_MLP), gen)
    model.eval()
    return model


def build_planted(regime: str, seed: int = 0) -> tuple[HookedTransformer, CharTokenizer]:
    """`toy/planted-<regime>` (seed 0) or a re-drawn variant: (model, tokenizer). Deterministic; no training."""
    return _build(regime, seed), CharTokenizer(TOY_ALPHABET)


def _builder(regime: str):
    def build() -> tuple[HookedTransformer, CharTokenizer]:
        return build_planted(regime)

    build.__name__ = f"build_planted_{regime.replace('-', '_')}"
    return build


_DESCRIPTIONS = {
    "clean": "the circuit alone: L0H0 (mover) -> MLP1 (mapper); every other component inert",
    "correlated-decoy": "circuit L0H0 -> MLP1, plus decoys L0H1 and MLP0 perfectly correlated with the answer "
                        "but never read (exact effect 0)",
    "saturated-decoy": "circuit L0H0 -> MLP1, plus decoy L0H1 feeding near-threshold ReLUs in MLP1: large "
                       "gradient / attribution-patching score, exact effect ~0",
    "cancelling-pair": "circuit L0H0 -> MLP1, plus L0H2 and L0H3 writing +-A one-hot(x) into a subspace MLP1 "
                       "reads through thresholded ReLUs: each alone moves the answer as much as the circuit, "
                       "together exactly 0, and every gradient through them is 0",
}


def register() -> None:
    from ..models.toy import register_toy

    for regime in PLANTED_REGIMES:
        register_toy(f"planted-{regime}", _builder(regime),
                     f"planted-circuit model ({regime}) for the `planted` task ('c394=' -> 'd'): "
                     f"{_DESCRIPTIONS[regime]}. Ground truth in the entry's meta.",
                     meta=planted_meta(regime))
