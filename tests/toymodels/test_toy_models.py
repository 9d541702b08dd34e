"""Toy models with known answers: planted circuits (hand-set weights) and models trained here.

Every check uses plain TransformerLens hooks (run_with_hooks / run_with_cache), not our methods, so
these tests establish the ground truth that the methods are later graded against.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from mcp_interp.methods.core.sites import Site
from mcp_interp.models import ModelPool, get_toy, toy_models
from mcp_interp.models.toy import build_toy
from mcp_interp.tasks.builtin import BUILTIN_TASKS
from mcp_interp.tasks.dataset import build_dataset
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.tasks.validation import check_with_tokenizer
from mcp_interp.toymodels import toy_tasks
from mcp_interp.toymodels import trained as T
from mcp_interp.toymodels.planted import (
    ALL_COMPONENTS,
    COMPONENTS,
    PLANTED_REGIMES,
    PLANTED_TASK,
    PLANTED_TASKS,
    build_planted,
    planted_meta,
)

# ------------------------------------------------------------------ helpers (plain TL hooks)


def _batch(spec: TaskSpec, tok, n: int, seed: int = 0, cf: str | None = None):
    ds = build_dataset(spec, tok, n, seed=seed, counterfactual=cf)
    toks = torch.tensor([e.tokens for e in ds.examples])
    cf_toks = torch.tensor([e.cf_tokens for e in ds.examples])
    ans = torch.tensor([e.answer_id for e in ds.examples])
    cf_ans = torch.tensor([e.cf_answer_id for e in ds.examples])
    return toks, cf_toks, ans, cf_ans


def _logit_diff(logits: torch.Tensor, ans: torch.Tensor, cf_ans: torch.Tensor) -> torch.Tensor:
    last = logits[:, -1]
    return (last.gather(1, ans[:, None]) - last.gather(1, cf_ans[:, None])).squeeze(1).mean()


_HOOK_HEAD = {c["name"]: (c["hook"], c["head"]) for c in COMPONENTS}


def _comp(name: str) -> tuple[str, int | None]:
    """(hook, head or None) of a planted component, looked up by its name (never parsed)."""
    return _HOOK_HEAD[name]


def _patch_hooks(names: list[str], source: dict | None):
    """Hooks that replace each component with its activation from `source` (a cache), or zero it."""
    hooks = []
    for name in names:
        hook_name, head = _comp(name)

        def fn(act, hook, head=head):
            new = torch.zeros_like(act) if source is None else source[hook.name]
            if head is None:
                return new
            act = act.clone()
            act[:, :, head] = new[:, :, head]
            return act

        hooks.append((hook_name, fn))
    return hooks


class Planted:
    """A planted model with a batch: clean x, counterfactual x' (resample_x) and their caches."""

    def __init__(self, regime: str, n: int = 32):
        self.model, self.tok = build_planted(regime)
        self.toks, self.cf_toks, self.ans, self.cf_ans = _batch(TaskSpec.model_validate(PLANTED_TASK), self.tok, n)
        with torch.no_grad():
            logits, self.cache = self.model.run_with_cache(self.toks)
            cf_logits, self.cf_cache = self.model.run_with_cache(self.cf_toks)
        self.m_clean = _logit_diff(logits, self.ans, self.cf_ans).item()
        self.m_cf = _logit_diff(cf_logits, self.ans, self.cf_ans).item()
        self.accuracy = (logits[:, -1].argmax(-1) == self.ans).float().mean().item()

    @torch.no_grad()
    def metric(self, toks, hooks) -> float:
        return _logit_diff(self.model.run_with_hooks(toks, fwd_hooks=hooks), self.ans, self.cf_ans).item()

    def noising(self, names: list[str]) -> float:
        """Run x with `names` patched from x'; 1.0 = the behaviour is gone (as on x'), 0 = no effect."""
        m = self.metric(self.toks, _patch_hooks(names, self.cf_cache))
        return (self.m_clean - m) / (self.m_clean - self.m_cf)

    def denoising(self, names: list[str]) -> float:
        """Run x' with `names` patched from x; 1.0 = the clean behaviour is restored."""
        m = self.metric(self.cf_toks, _patch_hooks(names, self.cache))
        return (m - self.m_cf) / (self.m_clean - self.m_cf)

    def zero(self, names: list[str]) -> float:
        m = self.metric(self.toks, _patch_hooks(names, None))
        return (self.m_clean - m) / (self.m_clean - self.m_cf)

    def _grads(self, toks) -> dict[str, torch.Tensor]:
        """d metric / d activation at every component hook, on `toks`."""
        acts = {}

        def keep(act, hook):
            act.requires_grad_(True)
            acts[hook.name] = act
            return act

        names = sorted({_comp(c)[0] for c in ALL_COMPONENTS})
        with torch.enable_grad():
            logits = self.model.run_with_hooks(toks, fwd_hooks=[(n, keep) for n in names])
            m = _logit_diff(logits, self.ans, self.cf_ans)
            grads = torch.autograd.grad(m, [acts[n] for n in names])
        return dict(zip(names, grads))

    def _per_comp(self, name: str, t: torch.Tensor) -> torch.Tensor:
        hook, head = _comp(name)
        return t if head is None else t[:, :, head]

    def atp(self, name: str) -> float:
        """Attribution patching (denoising): (a(x) - a(x')) . d m / d a at x', normalised."""
        hook, _ = _comp(name)
        g = self._per_comp(name, self._grads(self.cf_toks)[hook])
        diff = self._per_comp(name, self.cache[hook] - self.cf_cache[hook])
        return ((diff * g).sum() / (self.m_clean - self.m_cf)).item()  # m is a batch mean: sum = mean effect

    def grad_x_act(self, name: str) -> float:
        hook, _ = _comp(name)
        g = self._per_comp(name, self._grads(self.toks)[hook])
        return ((self._per_comp(name, self.cache[hook]) * g).sum() / (self.m_clean - self.m_cf)).item()

    def act_diff(self, name: str) -> float:
        """Mean norm of a(x) - a(x') at the final position: the correlation-style score."""
        hook, _ = _comp(name)
        d = self._per_comp(name, self.cache[hook] - self.cf_cache[hook])[:, -1]
        return d.flatten(1).norm(dim=1).mean().item()


@pytest.fixture(scope="module", params=PLANTED_REGIMES)
def planted(request):
    return request.param, Planted(request.param), planted_meta(request.param)


# ------------------------------------------------------------------ planted circuits


def test_planted_registry_and_task_spec():
    models = toy_models()
    for regime in PLANTED_REGIMES:
        entry = models[f"planted-{regime}"]
        meta = entry.meta
        assert meta["regime"] == regime and meta["task"] == "planted"
        assert [c["name"] for c in meta["components"]] == ALL_COMPONENTS
        assert {c["name"] for c in meta["circuit"]} == {"L0H0", "MLP1"}
        pair = ["L0H2", "L0H3"] if regime == "cancelling-pair" else []
        assert meta["important"] == ["L0H0", *pair, "MLP1"]
        assert {"embed->L0H0.v", "L0H0->MLP1", "MLP1->logits"} <= set(meta["important_edges"])
        labels = {c["name"]: c["label"] for c in meta["components"]}
        assert sorted(n for n, l in labels.items() if l == "decoy") == sorted(d["name"] for d in meta["decoys"])
        model, _ = build_toy(entry)
        for c in meta["components"]:
            assert c["hook"] in model.hook_dict
        spec = TaskSpec.model_validate(PLANTED_TASKS[regime])
        assert spec.name == "planted" and TaskSpec.model_validate(toy_tasks()[meta["task"]]) == spec
    report = check_with_tokenizer(TaskSpec.model_validate(PLANTED_TASK), build_planted("clean")[1])
    assert not report.errors and not report.warnings
    assert report.stats["resample_x"]["answer_changes"] == 1.0
    assert {d["name"] for d in planted_meta("correlated-decoy")["decoys"]} == {"L0H1", "MLP0"}
    assert {d["name"] for d in planted_meta("saturated-decoy")["decoys"]} == {"L0H1"}
    assert [[c["name"] for c in p] for p in planted_meta("cancelling-pair")["cancelling_pairs"]] == [["L0H2", "L0H3"]]
    with pytest.raises(ValueError):
        planted_meta("nope")


def test_planted_components_speak_the_site_vocabulary():
    """Names and hooks in the ground truth are those of the core Site of each component."""
    assert ALL_COMPONENTS == [c["name"] for c in COMPONENTS]
    for c in COMPONENTS:
        site = Site("z", c["layer"], head=c["head"]) if c["kind"] == "head" else Site("mlp_out", c["layer"])
        assert (c["name"], c["hook"]) == (site.name, site.hook)
    names = {c["name"] for c in COMPONENTS}
    for regime in PLANTED_REGIMES:
        for seed in (0, 3):
            meta = planted_meta(regime, seed)
            listed = meta["circuit"] + meta["decoys"] + meta["inert"] + [c for p in meta["cancelling_pairs"] for c in p]
            assert {c["name"] for c in listed} <= names and set(meta["important"]) <= names


def test_planted_models_deterministic():
    for regime in PLANTED_REGIMES:
        a, b = build_planted(regime)[0].state_dict(), build_planted(regime)[0].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_planted_solves_task(planted):
    regime, p, meta = planted
    assert p.accuracy == 1.0
    assert p.m_clean == pytest.approx(meta["expected"]["clean_logit_diff"], abs=1e-4)
    assert p.m_cf == pytest.approx(-meta["expected"]["clean_logit_diff"], abs=1e-4)
    # The distractor counterfactual changes nothing the model reads.
    toks, cf_toks, ans, _ = _batch(TaskSpec.model_validate(PLANTED_TASK), p.tok, 32, cf="resample_digits")
    with torch.no_grad():
        a, b = p.model(toks)[:, -1], p.model(cf_toks)[:, -1]
    assert torch.allclose(a.gather(1, ans[:, None]), b.gather(1, ans[:, None]), atol=1e-5)


def test_planted_patching_matches_ground_truth(planted):
    regime, p, meta = planted
    labels = {c["name"]: c["label"] for c in meta["components"]}
    circuit = [n for n, l in labels.items() if l == "circuit"]
    for name, label in labels.items():
        noise, denoise, zero = p.noising([name]), p.denoising([name]), p.zero([name])
        if label == "circuit":
            assert noise > 0.95 and denoise > 0.95, (regime, name, noise, denoise)
            assert zero > 0.4, (regime, name, zero)
        elif label == "decoy":
            assert abs(noise) < 0.02 and abs(denoise) < 0.02 and abs(zero) < 0.02, (regime, name, noise, denoise, zero)
        elif label == "inert":
            assert abs(noise) < 1e-5 and abs(denoise) < 1e-5 and abs(zero) < 1e-5, (regime, name, noise, denoise, zero)
        elif label == "cancelling":
            assert abs(noise) > 0.95 and abs(denoise) > 0.95, (regime, name, noise, denoise)
    for pair in meta["cancelling_pairs"]:
        names = [c["name"] for c in pair]
        a, b = p.noising(names[:1]), p.noising(names[1:])
        assert (a == pytest.approx(pair[0]["effect_alone"], abs=1e-4)
                and b == pytest.approx(pair[1]["effect_alone"], abs=1e-4))
        assert a * b < 0  # opposite effects ...
        assert abs(p.noising(names)) < 1e-5 and abs(p.denoising(names)) < 1e-5 and abs(p.zero(names)) < 1e-5
    # Circuit faithfulness: the circuit alone carries the behaviour, everything else jointly nothing.
    rest = [n for n in ALL_COMPONENTS if n not in circuit]
    assert p.noising(circuit) > 0.95 and p.denoising(circuit) > 0.95
    assert abs(p.noising(rest)) < 0.02 and abs(p.denoising(rest)) < 0.02


def test_cheap_methods_fail_on_their_decoys():
    # Correlated decoy: the largest activation differences in the model, but AtP and exact ~0.
    p = Planted("correlated-decoy")
    for decoy in ("L0H1", "MLP0"):
        assert p.act_diff(decoy) > 2 * p.act_diff("L0H0")
        assert abs(p.atp(decoy)) < 1e-6 and abs(p.noising([decoy])) < 1e-6
    assert p.atp("L0H0") == pytest.approx(1.0, abs=0.01)

    # Saturated decoy: AtP and gradient x activation rank it above the real circuit; exact ~0.
    p = Planted("saturated-decoy")
    meta = planted_meta("saturated-decoy")
    atp_decoy, atp_mover = p.atp("L0H1"), p.atp("L0H0")
    assert atp_decoy > 1.5 > atp_mover > 0.9, (atp_decoy, atp_mover)
    assert atp_decoy == pytest.approx(meta["decoys"][0]["linear_estimate"], rel=1e-3)
    assert p.grad_x_act("L0H1") > p.grad_x_act("L0H0") > 0.9
    assert abs(p.denoising(["L0H1"])) < 0.01
    assert p.denoising(["L0H1"]) == pytest.approx(meta["decoys"][0]["exact_effect"], rel=1e-3)

    # Cancelling pair: each member alone moves the answer as much as the circuit, but every gradient
    # through them is 0, so attribution patching and gradient x activation score them 0.
    p = Planted("cancelling-pair")
    for name in ("L0H2", "L0H3"):
        assert abs(p.noising([name])) > 0.95 * p.noising(["L0H0"])
        assert p.atp(name) == 0.0 and p.grad_x_act(name) == 0.0
    assert p.atp("L0H0") == pytest.approx(1.0, abs=0.01)


def test_planted_seeds_permute_roles():
    """Another seed puts the roles on other heads and redraws the inert weights; the meta follows."""
    from mcp_interp.toymodels.planted import role_heads

    seen = {tuple(role_heads(s).values()) for s in range(8)}
    assert len(seen) > 3
    for seed in (3, 5):
        for regime in ("saturated-decoy", "cancelling-pair"):
            meta = planted_meta(regime, seed)
            model, tok = build_planted(regime, seed)
            toks, cf_toks, ans, cf_ans = _batch(TaskSpec.model_validate(PLANTED_TASK), tok, 16)
            with torch.no_grad():
                assert (model(toks)[:, -1].argmax(-1) == ans).all()
                _, cache = model.run_with_cache(toks)
                m_x = _logit_diff(model(toks), ans, cf_ans).item()
                m_cf = _logit_diff(model(cf_toks), ans, cf_ans).item()
                for name in meta["important"]:
                    hook, head = _comp(name)
                    m = _logit_diff(model.run_with_hooks(cf_toks, fwd_hooks=_patch_hooks([name], cache)),
                                    ans, cf_ans).item()
                    assert abs((m - m_cf) / (m_x - m_cf)) > 0.95, (seed, regime, name)


def test_planted_through_the_pool():
    lm = ModelPool(device="cpu").get("toy/planted-clean")
    assert lm.n_params > 0 and "planted" in lm.source
    assert get_toy("toy/planted-clean").meta["circuit"][0]["hook"] == "blocks.0.attn.hook_z"


# ------------------------------------------------------------------ trained models: cache mechanics


def test_training_cache_deterministic_and_keyed(tmp_path):
    cfg = dict(T.INDUCTION_TRAIN_CFG, steps=20)
    m1, info1 = T.load_or_train("induction-2l", T.INDUCTION_MODEL_CFG, cfg, T._train_induction, tmp_path)
    entry = T.cache_entry("induction-2l", T.INDUCTION_MODEL_CFG, cfg, tmp_path)
    assert (entry / "model.safetensors").is_file()
    stored = json.loads((entry / "config.json").read_text())
    assert stored["train_config"] == cfg and "task_accuracy" in stored["metrics"] and stored["train_seconds"] > 0
    # Same seed, retrained from scratch: identical weights.
    m2, _ = T.load_or_train("induction-2l", T.INDUCTION_MODEL_CFG, cfg, T._train_induction, tmp_path, use_cache=False)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    # Cached: loads, same weights, and the global RNG / thread count are left alone.
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    m3, info3 = T.load_or_train("induction-2l", T.INDUCTION_MODEL_CFG, cfg, T._train_induction, tmp_path)
    assert time.perf_counter() - t0 < 5 and info3["key"] == info1["key"]
    assert all(torch.equal(s1[k], m3.state_dict()[k]) for k in s1)
    assert torch.equal(before, torch.random.get_rng_state()) and torch.get_num_threads() == threads
    # The key covers the training config.
    assert T.cache_entry("induction-2l", T.INDUCTION_MODEL_CFG, dict(cfg, seed=1), tmp_path) != entry
    # A corrupt cache entry is retrained, not fatal.
    (entry / "model.safetensors").write_bytes(b"garbage")
    m4, _ = T.load_or_train("induction-2l", T.INDUCTION_MODEL_CFG, cfg, T._train_induction, tmp_path)
    assert all(torch.equal(s1[k], m4.state_dict()[k]) for k in s1)
    assert T._load_entry(entry) is not None  # ... and the entry rewritten


def test_build_toy_passes_cache_dir_only_when_accepted(tmp_path):
    seen = {}

    def with_cache(cache_dir=None):
        seen["dir"] = cache_dir
        return build_planted("clean")

    from mcp_interp.models.toy import ToyEntry

    build_toy(ToyEntry("x", with_cache, "d"), tmp_path)
    assert seen["dir"] == tmp_path
    build_toy(ToyEntry("y", lambda: build_planted("clean"), "d"), tmp_path)  # zero-argument builders still work


# ------------------------------------------------------------------ trained models (train on first use, then cached)


@pytest.fixture(scope="module")
def pool():
    return ModelPool(device="cpu")


@pytest.mark.slow
def test_induction_2l_solves_task_and_has_induction_heads(pool):
    lm = pool.get("toy/induction-2l")
    model = lm.model
    toks, _, ans, _ = _batch(BUILTIN_TASKS["induction"], lm.tokenizer, 256, seed=3)
    with torch.no_grad():
        acc = (model(toks)[:, -1].argmax(-1) == ans).float().mean().item()
    assert acc >= 0.9
    heads = T.induction_heads(model)
    prev, ind = heads["prev_token_head"], heads["induction_head"]
    assert prev["layer"] == 0 and prev["score"] >= 0.5, heads
    assert ind["layer"] == 1 and ind["score"] >= 0.5, heads
    # Layer 1 does no previous-token attention; layer 0 does no induction.
    assert max(heads["prev_token_scores"][1]) < 0.2 and max(heads["induction_scores"][0]) < 0.1
    meta = get_toy("induction-2l").meta
    assert meta["ground_truth"]["prev_token_layer"] == 0 and meta["ground_truth"]["induction_layer"] == 1

    # Zero-ablating either layer's heads destroys the behaviour.
    toks, _, ans, _ = _batch(BUILTIN_TASKS["induction"], lm.tokenizer, 128, seed=4)

    def zero_heads(layer, heads_):
        def fn(z, hook):
            z = z.clone()
            z[:, :, heads_] = 0
            return z
        return [(f"blocks.{layer}.attn.hook_z", fn)]

    with torch.no_grad():
        for layer in (0, 1):
            logits = model.run_with_hooks(toks, fwd_hooks=zero_heads(layer, list(range(4))))
            assert (logits[:, -1].argmax(-1) == ans).float().mean().item() < 0.3


@pytest.mark.slow
def test_induction_2l_cached(pool):
    pool.get("toy/induction-2l")  # trained (or loaded) by now
    entry = T.cache_entry("induction-2l", T.INDUCTION_MODEL_CFG, T.INDUCTION_TRAIN_CFG, pool.cache_dir)
    info = json.loads((entry / "config.json").read_text())
    assert info["metrics"]["task_accuracy"] >= 0.9
    t0 = time.perf_counter()
    model, tok = T.build_induction_2l(cache_dir=pool.cache_dir)
    assert time.perf_counter() - t0 < 5
    ref = pool.get("toy/induction-2l").model.state_dict()
    assert all(torch.equal(v, ref[k].cpu()) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_parens_classifier(pool):
    lm = pool.get("toy/parens-classifier")
    acc = T.parens_accuracy(lm.model)
    assert acc["n_heldout"][0] >= 3
    assert acc["heldout_balanced_mix"] >= 0.95, acc  # strings never seen in training, classes 50/50
    assert acc["all_balanced_mix"] >= 0.95, acc
    # Through the task layer: the built-in `parens` prompts (mostly unbalanced, as sampled).
    toks, _, ans, _ = _batch(BUILTIN_TASKS["parens"], lm.tokenizer, 200, seed=0)
    with torch.no_grad():
        pred = lm.model(toks)[:, -1].argmax(-1)
    assert (pred == ans).float().mean().item() >= 0.95
    assert set(ans.tolist()) <= {lm.tokenizer.encode("y")[0], lm.tokenizer.encode("n")[0]}
