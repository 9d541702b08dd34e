"""Linear probes against known answers: the planted direction, a decoy that is decodable but unused, the control
task, the split and the refusals.

toy/planted-direction stores its binary variable g along one seeded random direction u of blocks.1.hook_resid_pre at
END (+1 for 'lo', -1 for 'hi'); toy/planted-direction-decoy also writes g along v, which nothing downstream reads.
Seed 3 throughout: nothing here is tuned to the registered seed 0.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mcp_interp.methods.core import LogitDiffMetric, Site
from mcp_interp.methods.probes import control_labels, train_probes
from mcp_interp.methods.steering import AddVector, steer
from mcp_interp.tasks.dataset import build_dataset
from mcp_interp.tasks.interchange import split_by_base
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.toymodels.planted_direction import (
    PLANTED_DIRECTION_TASK,
    SITE_HOOK,
    build_planted_direction,
    planted_direction_meta,
)
from mcp_interp.toymodels.planted_direction_decoy import build_planted_direction_decoy, planted_direction_decoy_meta

SPEC = TaskSpec.model_validate(PLANTED_DIRECTION_TASK)
SEED = 3
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead on 2 shared cores


def data(tok, n: int = 128, seed: int = 1):
    return build_dataset(SPEC, tok, n, seed=seed).examples


def steer_flips(model, ex, direction, alphas=(-4.0, 4.0)) -> list[float]:
    """methods.steering along a unit `direction` at the site, END: the share of prompts whose answer flips per
    alpha (the flip_group counterfactual is the other row's letter)."""
    a, c = [e.answer_id for e in ex], [e.cf_answer_id for e in ex]
    st = steer(model, AddVector(Site("resid_pre", 1), torch.as_tensor(direction, dtype=torch.float32), unit=True),
               [e.tokens for e in ex], list(alphas), positions=[[e.positions["END"]] for e in ex], max_new_tokens=0,
               answers=a, cf_answers=c, metric=LogitDiffMetric(a, c))
    return [r["flip"]["mean"] for r in st.summary["steered"]]


def probes(model, ex, variable: str = "g", layers=(0, 1), keys: str = "x", **kw):
    return train_probes(model, [e.tokens for e in ex], [e.positions["END"] for e in ex],
                        [str(e.base[variable]) for e in ex], [e.prompt for e in ex], [str(e.base[keys]) for e in ex],
                        list(layers), "resid_pre", seed=1, **kw)


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_probe_finds_the_planted_direction_at_its_layer_and_beats_the_control():
    model, tok = build_planted_direction(SEED)
    u = unit(planted_direction_meta(SEED)["direction"])
    ex = data(tok)
    st = probes(model, ex)
    l0, l1 = st.layers
    # the split: no base prompt on both sides, every prompt on one side
    assert st.shared_bases == 0 and sorted(st.train_idx + st.test_idx) == list(range(len(ex)))
    assert not {ex[i].prompt for i in st.train_idx} & {ex[i].prompt for i in st.test_idx}
    assert st.classes == ["hi", "lo"] and st.direction_classes == ["lo"] and "inner CV" in st.c_chosen_by
    # layer 1: g along u exactly; the direction points towards 'lo' (resid . u = +1 there)
    assert l1.accuracy["mean"] == 1.0 and l1.accuracy["n"] == len(st.test_idx)
    assert l1.directions.shape == (len(u), 1) and np.linalg.norm(l1.directions[:, 0]) == pytest.approx(1.0)
    assert l1.directions[:, 0] @ u >= 0.95, "the probe direction must be +u (towards classes[1] = 'lo')"
    assert l1.separation[0] == pytest.approx(2.0, abs=0.2)  # resid . u = +1 / -1: the classes lie 2 apart along it
    # the control task (a random group per letter) is markedly harder, and selectivity's CI excludes 0
    assert l1.control_accuracy["mean"] <= 0.8 and l1.selectivity["ci95"][0] > 0
    assert l1.selectivity["mean"] == pytest.approx(l1.accuracy["mean"] - l1.control_accuracy["mean"])
    # resid_pre 0 at END is the embedding of '=' on every prompt: nothing to decode beyond the majority class
    assert l0.accuracy["mean"] == pytest.approx(st.majority["mean"]) and np.all(l0.directions == 0)
    assert st.best.layer == 1 and st.majority["mean"] < 0.75
    assert set(st.control_map) == set("abcdefgh") and set(st.control_map.values()) == {"lo", "hi"}
    assert set(st.tensors()) == {"layer0", "layer1"}


def test_decoy_is_decodable_but_unused():
    """With u projected out of the site, a probe still reads g perfectly, along the decoy v; yet steering along that
    probe's direction moves no answer, while the direction a probe finds without the projection (half u) flips them:
    decodable is not used, and a probe alone cannot tell the two apart."""
    model, tok = build_planted_direction_decoy(SEED)
    meta = planted_direction_decoy_meta(SEED)
    u, v = unit(meta["direction"]), unit(meta["decoy_direction"])
    assert abs(u @ v) < 1e-6
    ex = data(tok)
    ut = torch.tensor(u, dtype=torch.float32)

    def no_u(act, hook):
        return act - (act @ ut)[..., None] * ut

    with model.hooks(fwd_hooks=[(SITE_HOOK, no_u)]):
        st = probes(model, ex, layers=(1,))
    p = st.layers[0]
    assert p.accuracy["mean"] == 1.0 and abs(p.directions[:, 0] @ v) >= 0.95 and abs(p.directions[:, 0] @ u) < 1e-3

    # steer (methods.steering) along what each probe found: the decoy probe's direction moves no answer at any
    # strength. Without the projection the probe reads g along u and v alike (the L2 probe splits its weight between
    # two equally good directions: (u + v) / sqrt 2, measured 0.70 / 0.70); its u part flips every lo prompt at -4
    # (u . alpha d = -2.8 takes G from +1 to -1.8) and every hi prompt at +4
    assert steer_flips(model, ex, p.directions[:, 0], (-20.0, -4.0, 4.0, 20.0)) == [0.0] * 4
    both = probes(model, ex, layers=(1,)).layers[0].directions[:, 0]
    assert both @ u == pytest.approx(2 ** -0.5, abs=0.05) and both @ v == pytest.approx(2 ** -0.5, abs=0.05)
    lo = np.mean([e.base["g"] == "lo" for e in ex])
    assert steer_flips(model, ex, both) == [pytest.approx(lo), pytest.approx(1 - lo)]


def test_multinomial_probe_has_one_direction_per_value():
    """w (one-hot along four directions at the site): a 4-way multinomial probe, one unit column per value, each
    pointing along its own w direction (centred on the four's mean); w's own values are its control keys, so the control
    can only relabel w and says so."""
    model, tok = build_planted_direction(SEED)
    wd = np.asarray(planted_direction_meta(SEED)["w_directions"], dtype=np.float64)  # [4, d]
    st = probes(model, data(tok), variable="w", layers=(1,), keys="w")
    p = st.layers[0]
    assert st.classes == ["0", "1", "2", "3"] and st.direction_classes == st.classes
    assert p.accuracy["mean"] == 1.0 and p.directions.shape == (wd.shape[1], 4)
    assert np.allclose(np.linalg.norm(p.directions, axis=0), 1.0)
    centred = wd - wd.mean(0)
    cos = np.array([[p.directions[:, i] @ unit(centred[j]) for j in range(4)] for i in range(4)])
    assert np.all(np.diag(cos) >= 0.8) and np.all(cos[~np.eye(4, dtype=bool)] < 0), cos  # measured 0.86..0.94
    assert st.control_is_relabel and p.selectivity["mean"] == pytest.approx(0.0, abs=0.1)


def test_control_labels_are_fixed_per_value_and_not_the_true_partition():
    keys = list("abcdefgh") * 3
    labels = ["lo" if k in "abcd" else "hi" for k in keys]
    for seed in range(20):
        cmap, relabel = control_labels(keys, labels, ["hi", "lo"], seed)
        assert not relabel and sorted(cmap.values()).count("lo") == 4  # balanced: 8 values into 2 labels
        truth = {k: "lo" if k in "abcd" else "hi" for k in "abcdefgh"}
        flipped = {k: ("hi" if l == "lo" else "lo") for k, l in truth.items()}
        assert cmap not in (truth, flipped)
        for v in ("lo", "hi"):  # stratified: each group's four letters split 2 / 2, independent of g
            assert sorted(cmap[k] for k in truth if truth[k] == v) == ["hi", "hi", "lo", "lo"]
    for seed in range(20):
        cmap, relabel = control_labels(["a", "b"], ["x", "y"], ["x", "y"], seed)
        assert relabel  # one input value per value of the variable: any control is a function of it
        assert set(cmap.values()) == {"x", "y"}  # ... but never one label for both (the control probe needs two)


def test_refusals():
    model, tok = build_planted_direction(SEED)
    ex = data(tok, n=32)
    with pytest.raises(ValueError, match="layers"):
        probes(model, ex, layers=(2,))
    with pytest.raises(ValueError, match="one value"):
        train_probes(model, [e.tokens for e in ex], [4] * len(ex), ["same"] * len(ex), [e.prompt for e in ex],
                     ["k"] * len(ex), [1])
    with pytest.raises(ValueError, match="site"):
        train_probes(model, [e.tokens for e in ex], [4] * len(ex), [str(e.base["g"]) for e in ex],
                     [e.prompt for e in ex], ["k"] * len(ex), [1], site_kind="z")


def test_a_value_seen_only_in_the_test_split_leaves_its_prompts_out():
    """A many-valued variable on few prompts: a value that lands only in the test split cannot be predicted; its test
    prompts are left out and reported, the rest is probed as usual (it used to refuse the whole request)."""
    model, tok = build_planted_direction(SEED)
    ex = data(tok, n=64)
    labels = [str(e.base["g"]) for e in ex]
    _, test = split_by_base([SimpleNamespace(base_key=e.prompt, i=i) for i, e in enumerate(ex)], 0.25, 1)
    odd = test[0].i  # one test prompt gets a value no train prompt has
    labels[odd] = "only-in-test"
    study = train_probes(model, [e.tokens for e in ex], [e.positions["END"] for e in ex], labels,
                         [e.prompt for e in ex], [str(e.base["x"]) for e in ex], [1], "resid_pre", seed=1)
    assert study.unseen == ["only-in-test"] and study.unseen_prompts == sum(l == "only-in-test" for l in labels)
    assert odd not in study.test_idx and "only-in-test" not in study.classes
    assert study.layers[0].accuracy["mean"] > 0.95  # the planted g is still decoded on the rest
