"""locate through the MCP tool: identities, agreement with a plain hook-per-cell loop, errors, caching."""

import numpy as np
import pytest
import torch
from mcp import Client
from mcp_helpers import call, call_error, finish

from mcp_interp.server.app import build_server

pytestmark = pytest.mark.anyio
TOY = "toy/tiny-random"



def hook_patch_metric(model, clean, corrupt, hook, pos, answer, cf_answer, head=None):
    """A plain reference: one forward of the corrupt prompt with the clean activation written in by a hook."""
    _, cache = model.run_with_cache(clean, names_filter=hook)

    def patch(act, hook):
        if head is None:
            act[:, pos] = cache[hook.name][:, pos]
        else:
            act[:, pos, head] = cache[hook.name][:, pos, head]
        return act

    logits = model.run_with_hooks(corrupt, fwd_hooks=[(hook, patch)])[0, -1]
    return float(logits[answer] - logits[cf_answer])


async def test_locate_identities_and_hook_loop_on_toy(store_dir):
    server = build_server(store_dir)
    async with Client(server) as c:
        out = await call(c, "locate", {"model": TOY, "task": "induction", "n": 12, "positions": "all",
                                       "sites": ["resid_pre", "attn_out", "mlp_out", "z"], "wait_seconds": 120})
        res = await finish(c, out)
        assert res["counterfactual"] == "resample_x6" and len(res["positions"]) == 11
        assert set(res["best_cells"]) == {"resid_pre", "attn_out", "mlp_out", "z"}
        run_dir_files = (await call(c, "get_run", {"run_id": res["run_id"]}))["files"]
        assert "resid_pre_heatmap.png" in run_dir_files and any(f.startswith("z_heatmap") for f in run_dir_files)
        blob = await c.read_resource(f"artifact://{res['run_id']}/effects.safetensors")
    import base64

    from safetensors.torch import load
    t = load(base64.b64decode(blob.contents[0].blob))
    mean = t["resid_pre.mean"].numpy()  # [layer, position]
    # resample_x6 changes only token 5: patching resid_pre at layer 0 there restores the clean run exactly,
    # and every position before it has an effect of exactly 0
    assert mean.shape == (2, 11)
    assert mean[0, 5] == pytest.approx(1.0, abs=1e-5)
    assert np.all(mean[:, :5] == 0)
    # compare random cells with a plain hook-per-cell loop, per example
    from mcp_interp.models import ModelPool
    from mcp_interp.tasks.builtin import BUILTIN_TASKS
    from mcp_interp.tasks.dataset import build_dataset
    lm = ModelPool().get(TOY)
    ds = build_dataset(BUILTIN_TASKS["induction"], lm.tokenizer, 12, 0, "resample_x6")
    rng = np.random.default_rng(0)
    per_ex = {s: t[f"{s}.per_example"] for s in ("resid_pre", "attn_out", "mlp_out", "z")}
    clean_m, cf_m = t["metric.clean"], t["metric.counterfactual"]
    hooks = {"resid_pre": "blocks.{}.hook_resid_pre", "attn_out": "blocks.{}.hook_attn_out",
             "mlp_out": "blocks.{}.hook_mlp_out", "z": "blocks.{}.attn.hook_z"}
    for _ in range(12):
        site = ["resid_pre", "attn_out", "mlp_out", "z"][rng.integers(4)]
        i, layer, pos = int(rng.integers(12)), int(rng.integers(2)), int(rng.integers(5, 11))
        head = int(rng.integers(4)) if site == "z" else None
        e = ds.examples[i]
        m = hook_patch_metric(lm.model, torch.tensor([e.tokens]), torch.tensor([e.cf_tokens]),
                              hooks[site].format(layer),
                              pos, e.answer_id, e.cf_answer_id, head)
        norm = (m - float(cf_m[i])) / float(clean_m[i] - cf_m[i])
        got = per_ex[site][i, layer, pos, head] if head is not None else per_ex[site][i, layer, pos]
        assert float(got) == pytest.approx(norm, abs=1e-4), (site, i, layer, pos, head)


async def test_locate_errors_and_cache(store_dir):
    async with Client(build_server(store_dir)) as c:
        assert "layers" in await call_error(c, "locate", {"model": TOY, "task": "induction", "layers": [7]})
        text = await call_error(c, "locate", {"model": TOY, "task": "induction", "positions": ["NOPE"]})
        assert "positions" in text and "FIRST_X6" in text
        text = await call_error(c, "locate", {"model": TOY, "task": "parens", "metric": "accuracy"})
        assert "metric" in text  # the schema offers logit_diff, prob and prob_diff only
        # asked for nothing, a task scored by accuracy is patched on its logit difference, and told so; pairs whose
        # counterfactual keeps the label (most of parens' resample_all) are left out: a logit difference needs two
        parens = await finish(c, await call(c, "locate", {"model": TOY, "task": "parens", "n": 8}))
        assert parens["metric"] == "logit_diff" and any("accuracy" in w for w in parens["warnings"])
        text = await call_error(c, "locate", {"model": TOY, "task": "induction", "variable": "x1"})
        assert "variable" in text and "resample_x6" in text
        assert "sites" in await call_error(c, "locate", {"model": TOY, "task": "induction", "sites": ["nope"]})
        args = {"model": TOY, "task": "induction", "variable": "x6", "positions": "named", "n": 8}
        first = await finish(c, await call(c, "locate", args))
        assert first["positions"] == ["FIRST_X6", "PREV_X5", "END"]
        assert first["cost"]["activation_cache_hits"] == 0
        second = await call(c, "locate", args)
        assert second["result"]["cached"] is True and second["result"]["run_id"] == first["run_id"]
        # another grid on the same (model, task, n, seed) reuses the clean/counterfactual activations
        third = await finish(c, await call(c, "locate", {**args, "positions": ["END"], "layers": [1]}))
        assert third["run_id"] != first["run_id"] and third["cost"]["activation_cache_hits"] == 1


async def test_locate_noising_identity(store_dir):
    async with Client(build_server(store_dir)) as c:
        res = await finish(c, await call(c, "locate", {"model": TOY, "task": "induction", "n": 8, "direction": "noise",
                                                       "positions": ["FIRST_X6", "END"], "layers": [0, 1]}))
        # noising layer 0 at the only differing token reproduces the counterfactual run: effect 1
        cells = {(c["layer"], c["position"]): c["effect"] for c in res["best_cells"]["resid_pre"]}
        assert cells[(0, "FIRST_X6")] == pytest.approx(1.0, abs=1e-5)


def _task(name: str, templates: list[str], positions: dict) -> dict:
    return {"name": name, "description": "x copied; slots move between templates",
            "variables": {"x": {"values": list("abcd")}, "y": {"values": list("efgh")}},
            "templates": templates, "answer": "{x}",
            "counterfactuals": [{"name": "rx", "kind": "resample", "variables": ["x"]}],
            "positions": positions, "default_n": 16, "validate_with_model": TOY}


async def test_locate_all_labels_moving_slots_honestly(store_dir):
    """One prompt length, but x sits at index 0 in one template and 1 in the other: positions='all' must not
    label those columns with the first prompt's token, and must warn that the named position moves."""
    async with Client(build_server(store_dir)) as c:
        await call(c, "define_task", _task("moving-slot", ["{x}{y}=", "{y}{x}="], {"X": {"variable": "x"}}))
        res = await finish(c, await call(c, "locate", {"model": TOY, "task": "moving-slot", "positions": "all",
                                                       "n": 16, "layers": [0]}))
    assert res["positions"] == ["0 (varies)", "1 (varies)", "2 END"]
    assert any("X at index 0 in" in w and "positions='named'" in w for w in res["warnings"])
    assert "aligned by index" in res["alignment"]
    for cell in res["best_cells"]["resid_pre"]:
        assert cell["position"] in res["positions"]


async def test_locate_all_aligns_prompts_of_different_lengths(store_dir):
    """Templates of 3 and 5 tokens: positions='all' aligns them by the named positions (X, Y, END) instead of
    refusing, says so, and each column patches the right token in every prompt (resid_pre at layer 0 at X, the
    only token resample_x changes, restores the clean run exactly)."""
    async with Client(build_server(store_dir)) as c:
        await call(c, "define_task", _task("two-lengths", ["{x}{y}=", "{x}zz{y}="],
                                           {"X": {"variable": "x"}, "Y": {"variable": "y"}}))
        res = await finish(c, await call(c, "locate", {"model": TOY, "task": "two-lengths", "positions": "all",
                                                       "n": 16, "layers": [0, 1]}))
    assert res["positions"] == ["X", "Y", "END"], res["positions"]
    assert "aligned by the named positions X, Y, END" in res["alignment"]
    assert any("no column" in w for w in res["warnings"])
    cells = {(c["layer"], c["position"]): c["effect"] for c in res["best_cells"]["resid_pre"]}
    assert cells[(0, "X")] == pytest.approx(1.0, abs=1e-5)


async def test_answer_set_tasks_patch_on_prob_diff(store_dir):
    """A task whose answer is a set of tokens (greater-than style) is located and attributed on P(correct set) -
    P(wrong set); patching the residual entering layer 0 at the only token that differs restores it exactly."""
    spec = {"name": "toy-greater", "description": "which tens digits come after the start year's",
            "variables": {"tens": {"range": [1, 8]}, "ones": {"range": [1, 9]}},
            "mechanisms": {"yy": {"expr": "str(tens) + str(ones)"}, "next_tens": {"expr": "str(tens + 1)"}},
            "templates": ["from 17{yy} to 17"], "answer": "{next_tens}",
            "answer_set": {"candidates": [str(d) for d in range(10)], "good": "int(c) > tens", "bad": "int(c) < tens"},
            "counterfactuals": [{"name": "rt", "kind": "resample", "variables": ["tens"]}],
            "positions": {"YY": {"variable": "yy", "token": "first"}}, "metric": "prob_diff",
            "validate_with_model": TOY}
    async with Client(build_server(store_dir)) as c:
        await call(c, "define_task", spec)
        res = await finish(c, await call(c, "locate", {"model": TOY, "task": "toy-greater", "n": 8,
                                                       "positions": "all", "wait_seconds": 120}))
        assert res["metric"] == "prob_diff"
        import base64

        from safetensors.torch import load
        blob = await c.read_resource(f"artifact://{res['run_id']}/effects.safetensors")
        t = load(base64.b64decode(blob.contents[0].blob))
        tens = next(i for i, p in enumerate(res["positions"]) if p.endswith("YY"))  # its first token: the tens digit
        gap = t["metric.clean"] - t["metric.counterfactual"]
        assert gap.abs().min() > 1e-3  # the prompts really differ on the metric
        # normalised per-example effects: 1 = the clean metric restored, exactly, at layer 0 on the tens digit
        assert torch.allclose(t["resid_pre.per_example"][:, 0, tens], torch.ones(8), atol=1e-4)
        att = await finish(c, await call(c, "attribute", {"model": TOY, "task": "toy-greater", "n": 8,
                                                          "method": "exact", "wait_seconds": 120}))
        assert att["summary"].startswith("exact on heads")


@pytest.mark.slow
async def test_locate_on_the_shortformer_induction_toy_falls_back_to_the_hooked_sweep(store_dir):
    """toy/induction-2l (shortformer positions: added to queries and keys, not the stream) is the model the
    induction task lists; the fast engine does not model that, so locate runs the reference sweep and says so."""
    async with Client(build_server(store_dir)) as c:
        res = await finish(c, await call(c, "locate", {"model": "toy/induction-2l", "task": "induction", "n": 8,
                                                       "sites": ["resid_pre", "z"], "wait_seconds": 120}))
        assert any("shortformer" in w for w in res["warnings"])
        blob = await c.read_resource(f"artifact://{res['run_id']}/effects.safetensors")
    import base64

    from safetensors.torch import load
    mean = load(base64.b64decode(blob.contents[0].blob))["resid_pre.mean"].numpy()
    pos = res["positions"]
    # the identity: the stream entering layer 0 at the only token that differs restores the clean run
    assert mean[0].max() == pytest.approx(1.0, abs=1e-5)
    assert res["best_cells"]["z"], res["best_cells"]
    assert len(pos) == mean.shape[1]
