"""Attribution graphs on the planted trace (toy/planted-trace), graded against edges derived by hand from its weights.

The expected values below come from the construction (see mcp_interp/toymodels/planted_trace.py), recomputed here
from its constants: the mover's frozen weight on the letter p = e^SCORE / (e^SCORE + T - 1), f1 = p (1 + S) - THETA,
and every direct effect as a product of the planted weights along the one route it has.
"""

from __future__ import annotations

import math

import pytest
import torch

from mcp_interp.methods import features as F
from mcp_interp.methods.tracing import LogitTarget, TracingTranscoder, trace, tracing_transcoder
from mcp_interp.models import get_toy
from mcp_interp.models.toy import build_toy
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.tasks.validation import check_with_tokenizer
from mcp_interp.toymodels import toy_tasks
from mcp_interp.toymodels.planted_trace import (
    ANSWERS,
    DECOY_GAIN,
    L_LOGIT,
    LETTERS,
    SCORE,
    SKIP,
    THETA,
    X_POS,
    build_planted_trace,
    latent_roles,
    planted_trace_meta,
    planted_trace_transcoders,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["0a1=", "2b3=", "1c0=", "3d2=", "0b123="]  # every letter, and a longer prompt (other T, other p)


@pytest.fixture(scope="module")
def toy():
    model, tok = build_planted_trace()
    return model, tok, planted_trace_transcoders()


def latent(seed: int, role: str) -> tuple[int, int]:
    """(layer, latent) of a role such as 'f1:b'."""
    for layer, roles in latent_roles(seed).items():
        if role in roles:
            return layer, roles.index(role)
    raise KeyError(role)


def expected_edges(graph, prompt: str, seed: int = 0, diff: bool = False) -> dict[tuple[int, int], float]:
    """(target node, source node) -> the direct effect derived by hand; every other edge is 0."""
    T = len(prompt)
    x = prompt[X_POS]
    p = math.exp(SCORE) / (math.exp(SCORE) + T - 1)
    f1 = p * (1 + SKIP) - THETA
    V = planted_trace_meta(seed)["constants"]["d_vocab"]

    def node(role: str, pos: int) -> int:
        layer, lat = latent(seed, role)
        i = graph.feature_index(layer, pos, lat)
        assert i is not None, f"{role} @{pos} is not active"
        return i

    f0, f1n, dec = node(f"f0:{x}", X_POS), node(f"f1:{x}", T - 1), node(f"decoy:{x}", T - 1)
    tok = graph.token_index(X_POS)
    out = {(f0, tok): 1.0, (f1n, f0): p, (f1n, tok): SKIP * p, (dec, f0): DECOY_GAIN * p,
           (dec, tok): DECOY_GAIN * SKIP * p,
           (graph.logit_index(0), f1n): L_LOGIT * f1 * (1.0 if diff else 1 - 1 / V)}
    for i, ch in enumerate(prompt[:-1]):
        if ch.isdigit():
            out[(node(f"digit:{ch}", i), graph.token_index(i))] = 1.0
    return out


def run(model, tok, tcs, prompt: str, diff: bool = False, **kw):
    answer = tok.encode(ANSWERS[LETTERS.index(prompt[X_POS])])[0]
    other = tok.encode(ANSWERS[(LETTERS.index(prompt[X_POS]) + 1) % 4])[0]
    target = LogitTarget(answer, other if diff else None)
    return trace(model, torch.tensor(tok.encode(prompt)), tcs, [target], token_str=lambda i: tok.decode([i]), **kw)


@pytest.mark.parametrize("diff", [False, True], ids=["demeaned_logit", "logit_difference"])
def test_edges_equal_the_direct_effects_derived_by_hand(toy, diff):
    model, tok, tcs = toy
    for prompt in PROMPTS:
        g = run(model, tok, tcs, prompt, diff).graph
        want = torch.zeros_like(g.adjacency)
        for (t, s), v in expected_edges(g, prompt, diff=diff).items():
            want[t, s] = v
        assert g.n_features == len(prompt) + 1  # one MLP0 latent per letter or digit, then f1 and the decoy at END
        assert (g.adjacency - want).abs().max() <= 1e-4, prompt
        # constants: -THETA into f1, -DECOY_GAIN THETA into the decoy, nothing into the logit (no biases)
        T, x = len(prompt), prompt[X_POS]
        assert abs(g.constants[g.feature_index(1, T - 1, latent(0, f"f1:{x}")[1])] + THETA) < 1e-6
        assert abs(g.constants[g.feature_index(1, T - 1, latent(0, f"decoy:{x}")[1])] + DECOY_GAIN * THETA) < 1e-6
        assert abs(g.constants[g.logit_index(0)]) < 1e-6


def test_exact_transcoders_leave_no_error_and_a_complete_graph(toy):
    model, tok, tcs = toy
    for prompt in PROMPTS:
        r = run(model, tok, tcs, prompt)
        g = r.graph
        assert g.error_norms.max() < 1e-6
        assert g.adjacency[:, g.error_start:g.token_start].abs().max() < 1e-6
        assert r.completeness_score == pytest.approx(1.0, abs=1e-5)
        assert r.replacement_score == pytest.approx(1.0, abs=1e-5)
        # value = sum of incoming edges + constant, for every latent and the logit (values from the real model)
        assert r.identity_error < 1e-5
        with torch.no_grad():
            logits = model(torch.tensor(tok.encode(prompt))[None])[0, -1]
        answer = tok.encode(ANSWERS[LETTERS.index(prompt[X_POS])])[0]
        assert float(g.target_values[0]) == pytest.approx(float(logits[answer] - logits.mean()), abs=1e-5)


def test_planted_path_is_the_top_path_and_the_decoy_is_pruned(toy):
    model, tok, tcs = toy
    for prompt in PROMPTS:
        r = run(model, tok, tcs, prompt)
        g, pr = r.graph, r.pruned
        T, x = len(prompt), prompt[X_POS]
        f0 = g.feature_index(0, X_POS, latent(0, f"f0:{x}")[1])
        f1 = g.feature_index(1, T - 1, latent(0, f"f1:{x}")[1])
        dec = g.feature_index(1, T - 1, latent(0, f"decoy:{x}")[1])
        assert r.paths[0].nodes == [g.token_index(X_POS), f0, f1, g.logit_index(0)]
        assert r.paths[0].score == pytest.approx(1 / (1 + SKIP), abs=1e-4)  # the skip route carries the rest
        assert r.paths[1].nodes == [g.token_index(X_POS), f1, g.logit_index(0)]
        # the decoy fires (louder than f1) and receives the largest direct effects of the graph, yet nothing of it
        # survives pruning: no node, no edge in or out above the thresholds
        assert g.activations[dec] > g.activations[f1] and g.adjacency[dec].abs().max() == g.adjacency.abs().max()
        assert pr.influence[dec] == 0 and not pr.node_mask[dec]
        assert not pr.edge_mask[dec].any() and not pr.edge_mask[:, dec].any()
        assert pr.node_mask[[f0, f1]].all() and pr.edge_mask[f1, f0] and pr.edge_mask[g.logit_index(0), f1]
        assert "L0 #" in r.paths[0].text() and f"logit {ANSWERS[LETTERS.index(x)]!r}" in r.paths[0].text()


def test_imperfect_transcoders_put_the_residual_in_error_nodes(toy):
    """Layer 0 without its skip term, layer 1 with f1's decoder halved: the error nodes carry exactly what is
    missing, the identity still holds, and completeness drops below 1."""
    model, tok, tcs = toy
    t0, t1 = tracing_transcoder(tcs[0]), tracing_transcoder(tcs[1])
    prompt = "2c1="
    T, x = len(prompt), prompt[X_POS]
    j = latent(0, f"f1:{x}")[1]
    dec1 = t1.W_dec.clone()
    dec1[j] *= 0.5
    bad = {0: TracingTranscoder(0, t0.W_enc, t0.b_enc, t0.W_dec, t0.b_dec, None, t0.reads),
           1: TracingTranscoder(1, t1.W_enc, t1.b_enc, dec1, t1.b_dec, t1.W_skip, t1.reads)}
    r = run(model, tok, bad, prompt)
    g = r.graph
    p = math.exp(SCORE) / (math.exp(SCORE) + T - 1)
    f1 = p * (1 + SKIP) - THETA
    e0, e1 = g.error_index(0, X_POS), g.error_index(1, T - 1)
    assert float(g.error_norms[e0 - g.error_start]) == pytest.approx(SKIP, abs=1e-5)
    assert float(g.error_norms[e1 - g.error_start]) == pytest.approx(0.5 * L_LOGIT * f1, abs=1e-5)
    others = [i for i in range(g.error_start, g.token_start) if i not in (e0, e1)]
    assert g.error_norms[[i - g.error_start for i in others]].max() < 1e-6
    f1n = g.feature_index(1, T - 1, j)
    assert float(g.adjacency[f1n, e0]) == pytest.approx(SKIP * p, abs=1e-4)  # the skip route now runs via the error
    assert float(g.adjacency[f1n, g.token_index(X_POS)]) == pytest.approx(0.0, abs=1e-6)
    half = 0.5 * L_LOGIT * f1 * (1 - 1 / 52)
    assert float(g.adjacency[g.logit_index(0), e1]) == pytest.approx(half, abs=1e-4)
    assert float(g.adjacency[g.logit_index(0), f1n]) == pytest.approx(half, abs=1e-4)
    assert r.identity_error < 1e-5
    assert r.completeness_score < 0.8 and r.replacement_score < 0.9


def test_a_redrawn_layout_is_traced_as_well(toy):
    """Seed 3 permutes which latent plays which role: the path and the decoy follow the roles, not the indices."""
    model, tok = build_planted_trace(3)
    tcs = planted_trace_transcoders(3)
    assert latent_roles(3) != latent_roles(0)
    prompt = "1d3="
    r = run(model, tok, tcs, prompt)
    g = r.graph
    want = torch.zeros_like(g.adjacency)
    for (t, s), v in expected_edges(g, prompt, seed=3).items():
        want[t, s] = v
    assert (g.adjacency - want).abs().max() <= 1e-4
    meta = planted_trace_meta(3)
    steps = meta["path"]["d"]
    f0 = g.feature_index(0, X_POS, steps[1]["latent"])
    f1 = g.feature_index(1, len(prompt) - 1, steps[2]["latent"])
    assert r.paths[0].nodes == [g.token_index(X_POS), f0, f1, g.logit_index(0)]
    dec = g.feature_index(1, len(prompt) - 1, meta["decoys"]["d"]["latent"])
    assert not r.pruned.node_mask[dec]


def test_registered_with_its_task_and_solves_it():
    entry = get_toy("planted-trace")
    assert entry is not None and entry.meta["task"] == "planted-trace" and entry.meta["kind"] == "planted-trace"
    model, tok = build_toy(entry)
    spec = TaskSpec.model_validate(toy_tasks()["planted-trace"])
    report = check_with_tokenizer(spec, tok)
    assert not report.errors and not report.warnings
    for x, a in zip(LETTERS, ANSWERS):
        with torch.no_grad():
            logits = model(torch.tensor(tok.encode(f"3{x}0="))[None])[0, -1]
        assert int(logits.argmax()) == tok.encode(a)[0]
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    a, b = build_planted_trace()[0].state_dict(), build_toy(entry)[0].state_dict()
    planted_trace_transcoders()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(torch.rand(2), expected)  # building used no global randomness


def test_hand_set_transcoders_save_as_sae_lens_and_load_back(toy, tmp_path):
    """The sae-lens directories load through methods.features (the project's transcoder loader) and trace to the
    same graph."""
    model, tok, tcs = toy
    loaded = {}
    for layer, tc in tcs.items():
        tc.save_model(tmp_path / f"L{layer}")
        assert F.is_transcoder_dir(tmp_path / f"L{layer}")
        got, got_layer, convention = F.load_transcoder(tmp_path / f"L{layer}")
        assert (got_layer, convention) == (layer, "resid")
        x = torch.randn(3, model.cfg.d_model)
        assert torch.allclose(got.encode(x), tcs[layer].encode(x)) and torch.allclose(got(x), tcs[layer](x))
        loaded[layer] = got
    a, b = run(model, tok, tcs, "0a1=").graph, run(model, tok, loaded, "0a1=").graph
    assert torch.equal(a.adjacency, b.adjacency) and torch.equal(a.features, b.features)
