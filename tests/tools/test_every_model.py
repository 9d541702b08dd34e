"""Every heavy tool's default call on every model family we ship or convert, through a real MCP client.

A model that loads must work with every tool (or be refused by it, with the reason, before any work). Each case
runs, on one server, the tools an agent runs in a study: run_baseline, locate, attribute (atp heads, atp_star,
eap edges, dla), scrub_hypothesis, train_das -> eval_das, train_sae -> find_features, compare_features, logit_lens,
attention, probe, steer (along the DAS direction), train_transcoders -> trace — with the
tools' defaults except sizes (n, SAE tokens, DAS examples) kept small. Models: every bundled toy with its task;
tiny `hf:` models of each family whose blocks normalise their outputs (Gemma 2, Gemma 3, OLMo 2, OLMo 2 with
GQA) on a copying task defined through define_task; SmolLM2 and Gemma-3-270M when installed.

Besides "it ran", each call is checked for what must hold on any model: a baseline gap to explain, edge and
head faithfulness curves that end at 1.0 with the whole model, a hypothesis claiming everything recovering 1.0, the
last lens point equal to the baseline, direct logit terms adding up to the logit difference, steering at alpha 0
changing nothing.
"""

from __future__ import annotations

import time

import pytest
import torch
from mcp import Client
from mcp_helpers import call, call_error, finish
from tiny_hf import spread_weights, tiny_family

from mcp_interp.server.app import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TOYS = {  # toy -> its task
    "tiny-random": "induction", "tiny-attn-only": "induction", "induction-2l": "induction",
    "parens-classifier": "parens", "planted-clean": "planted", "planted-correlated-decoy": "planted",
    "planted-saturated-decoy": "planted", "planted-cancelling-pair": "planted",
    "planted-direction": "planted-direction",
    "planted-features": "planted-features", "planted-switch": "planted-switch",
}
POST_NORM_FAMILIES = ["gemma2", "gemma3", "olmo2", "olmo2-gqa"]
LETTERS = list("abcdefghijkl")

# A copying task any word-level tokenizer of single letters can run: 'a b c d a b c' -> ' d'.
COPY_TASK = {
    "name": "copy-letters", "description": "copy the letter that followed the repeated prefix",
    "variables": {f"x{i}": {"values": LETTERS} for i in range(1, 5)},
    "constraints": ["distinct(x1, x2, x3, x4)"],
    "templates": ["{x1} {x2} {x3} {x4} {x1} {x2} {x3}"],
    "answer": " {x4}",
    "counterfactuals": [{"name": "resample_x4", "kind": "resample", "variables": ["x4"], "changes_answer": True}],
    "positions": {"X4": {"variable": "x4", "occurrence": 0}},  # END is always defined
}


def word_tokenizer():
    """A word-level tokenizer of single letters (every letter one token; words split on whitespace)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "[UNK]": 1} | {w: i + 2 for i, w in enumerate(LETTERS + list("mnopqrstuvwxyz"))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", unk_token="[UNK]")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    tok = word_tokenizer()
    out = {}
    for fam in POST_NORM_FAMILIES:
        d = tmp_path_factory.mktemp(fam)
        torch.manual_seed(0)
        hf = tiny_family(fam, len(tok))
        spread_weights(hf)
        hf.eval().save_pretrained(d)
        tok.save_pretrained(d)
        out[fam] = d
    return out


def _installed(name: str) -> bool:
    if name == "smollm2-135m":
        from mcp_interp.models.smollm2 import smollm2_gguf_path
        return smollm2_gguf_path() is not None
    from mcp_interp.models.gemma3 import gemma3_gguf_path
    return gemma3_gguf_path() is not None


def default_variable(spec: dict) -> str:
    """The first variable the task's first counterfactual changes."""
    cf = (spec.get("counterfactuals") or [{}])[0]
    changed = list(cf.get("variables") or []) + list(cf.get("assign") or {})
    return changed[0] if changed else next(iter(spec["variables"]))


async def study(c, model: str, task: str, n: int, timings: dict, post_norm: bool = False) -> None:
    """The heavy tools' default calls on one model, checked for what holds on any model."""

    async def run(tool: str, args: dict) -> dict:
        t0 = time.perf_counter()
        out = await finish(c, await call(c, tool, {"include_plot": False, "wait_seconds": 300, **args}))
        timings[f"{tool}:{args.get('method', args.get('level', ''))}"] = round(time.perf_counter() - t0, 1)
        return out

    info = await call(c, "load_model", {"model": model})
    n_layers = info["config"]["n_layers"]
    spec = (await call(c, "get_task", {"task": task}))["spec"]
    variable = default_variable(spec)
    base = {"model": model, "task": task, "n": n}
    bl = await run("run_baseline", base)
    assert bl["n"] >= 2
    await run("locate", base)
    heads = await run("attribute", base)
    assert heads["top"]
    await run("attribute", {**base, "method": "atp_star"})
    edges = await run("attribute", {**base, "method": "eap", "level": "edges"})
    assert any("eap_ig" in w for w in edges["warnings"]) == post_norm  # eap ranks poorly through post-norms
    for res in (heads, edges):  # the whole model is the whole model: the curve ends at 1
        curve = res["faithfulness"]
        assert curve["fractions"][-1] == 1.0 and curve["signed"][-1] == pytest.approx(1.0, abs=1e-3), curve
    scrub = await run("scrub_hypothesis", {**base, "hypothesis": "everything", "seeds": 1, "contributions": False})
    assert scrub["loss_recovered"]["mean"] == pytest.approx(1.0, abs=1e-3)
    if scrub["metric_recovered"]["mean"] is None:  # e.g. parens: the random inputs' accuracy equals the model's
        assert any("undefined" in w for w in scrub["warnings"]), scrub["warnings"]
    else:
        assert scrub["metric_recovered"]["mean"] == pytest.approx(1.0, abs=1e-3)
    layer = n_layers // 2
    das = await run("train_das", {"model": model, "task": task, "variable": variable, "layer": layer,
                                  "n_train": 2 * n, "n_test": n, "epochs": 2})
    await run("eval_das", {"run_id": das["run_id"]})
    sae = await run("train_sae", {"model": model, "layer": layer, "corpus": "task", "task": task, "tokens": 512,
                                  "epochs": 2, "expansion": 2, "k": 4, "splice_windows": 2})
    await run("find_features", {**base, "n": max(n, 8), "variable": variable, "sae": sae["run_id"], "n_perm": 19,
                                "test_top": 1})
    await run("compare_features", {"a": {"model": model, "layer": max(0, layer - 1)},
                                   "b": {"model": model, "layer": layer}, "task": task, "n": 2 * n,
                                   "n_perm": 19, "n_null": 2, "test_top": 1})
    await instruments(run, base, bl, das, variable, layer, bool(spec.get("positions")))
    await circuit_trace(c, run, base, n_layers, info["config"])


async def circuit_trace(c, run, base: dict, n_layers: int, config: dict) -> None:
    """train_transcoders on every MLP, then trace the task's first example through them: its rows add up to the
    real model's values and the scores are shares; models without a normalised MLP input are refused by name."""
    args = {"model": base["model"], "layers": list(range(n_layers)), "corpus": "task", "task": base["task"],
            "n_tokens": 256, "epochs": 1, "width": 2 * config["d_model"], "k": 4, "splice_windows": 0}
    if config["attn_only"] or "olmo2" in base["model"]:  # OLMo 2: no norm before the MLP
        err = await call_error(c, "train_transcoders", args)
        assert "model:" in err and ("attention-only" in err or "OLMo 2" in err), err
        return
    tcs = await run("train_transcoders", args)
    assert len(tcs["transcoders"]) == n_layers
    trace = {**base, "example": 0, "transcoders": tcs["run_id"], "contexts_tokens": 64, "check_top": 2,
             "max_feature_nodes": 256}
    if "gemma2" in base["model"]:  # Gemma 2 caps its logits (tanh): not affine in the stream, refused by name
        err = await call_error(c, "trace", trace)
        assert "model:" in err and "soft cap" in err, err
        return
    tr = await run("trace", trace)
    scale = max(1.0, max(abs(t["value"]) for t in tr["targets"]))
    assert tr["identity_error"] <= 1e-3 * scale, tr["identity_error"]
    assert 0.0 <= tr["replacement_score"] <= 1.0 + 1e-6 and 0.0 <= tr["completeness_score"] <= 1.0 + 1e-6
    assert tr["intervention_check"] is None or all(r["measured"] is not None for r in tr["intervention_check"]["rows"])


async def instruments(run, base: dict, bl: dict, das: dict, variable: str, layer: int, positions: bool) -> None:
    """logit_lens, attention, attribute dla, probe and steer, checked for what holds on any model."""
    lens = await run("logit_lens", {**base, "positions": ["END"], "counterfactual": bl["counterfactual"]})
    last = lens["layers"][-1]  # the last lens point is the model's own output: the baseline's numbers
    changes = {c["generator"]: c["label_changes"] for c in bl["counterfactual_checks"]}
    # on the same prompts (the lens keeps only pairs whose answer changes: all of them when the generator always does)
    if lens["metric"] == "logit_diff" and "logit_diff" in bl["metrics"] and changes[bl["counterfactual"]] == 1.0:
        assert last["metric"]["END"]["mean"] == pytest.approx(bl["metrics"]["logit_diff"]["mean"], abs=1e-3)
    if positions:  # attention reads to the task's named positions (a task without them is refused by name)
        looks = await run("attention", base)
        assert all(0.0 <= s["mean"] <= 1.0 + 1e-6 for h in looks["top"] for s in h["attention"].values())
    if "logit_diff" in bl["metrics"]:  # the direct terms add up to the logit difference on every architecture
        dla = await run("attribute", {**base, "method": "dla", "faithfulness": False})
        assert dla["direct"]["identity_error"] is not None, dla["warnings"]  # within 1e-3 of the largest |metric|:
        assert not any("miss the logit difference" in w for w in dla["warnings"]), dla["warnings"]
    probed = await run("probe", {**base, "n": 4 * base["n"], "variable": variable, "layers": [layer]})
    assert probed["shared_bases"] == 0 and 0.0 <= probed["layers"][0]["accuracy"]["mean"] <= 1.0
    steered = await run("steer", {**base, "alphas": [0.0, 4.0], "max_new_tokens": 2, "n_generate": 1,
                                  "positions": ["END"],
                                  "intervention": {"kind": "feature", "source": "das", "das_run": das["run_id"],
                                                   "index": 0}})
    zero = steered["generations"][0]["by_alpha"][0]  # alpha 0 changes nothing
    assert zero["steered"] == steered["generations"][0]["baseline"], steered["generations"]


@pytest.mark.parametrize("toy", sorted(TOYS))
async def test_every_heavy_tool_on_every_toy(toy, store_dir):
    timings: dict = {}
    async with Client(build_server(store_dir)) as c:
        await study(c, f"toy/{toy}", TOYS[toy], 8, timings)
    print(toy, timings)


@pytest.mark.parametrize("family", POST_NORM_FAMILIES)
async def test_every_heavy_tool_on_post_norm_families(family, hf_dirs, store_dir):
    timings: dict = {}
    async with Client(build_server(store_dir)) as c:
        await call(c, "define_task", COPY_TASK)
        await study(c, f"hf:{hf_dirs[family]}", COPY_TASK["name"], 8, timings, post_norm=True)
    print(family, timings)


@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
async def test_every_heavy_tool_on_the_real_models(model, store_dir):
    if not _installed(model):
        pytest.skip(f"{model} is not installed")
    timings: dict = {}
    async with Client(build_server(store_dir)) as c:
        await study(c, model, "ioi", 4, timings, post_norm=model.startswith("gemma"))  # n = 4: AtP* is the slow one
    print(model, timings)
