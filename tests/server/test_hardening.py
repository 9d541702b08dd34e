"""Hostile and unlucky input through a real MCP client (issue 15): every failure is a named ToolError, one request's
cost is bounded, waiting holds no thread, local model paths stay confined, built-ins stay built-in, progress moves,
and crash debris is swept. Multi-process cases (several servers on one store, kill -9) are in test_multi_server.py."""

from __future__ import annotations

import json
import os
import time

import anyio
import pytest
import torch
from mcp import Client
from mcp_helpers import call, call_error, copy_spec, finish

from mcp_interp.server.app import build_server
from mcp_interp.tools import baseline, locate

pytestmark = pytest.mark.anyio
TOY = "toy/tiny-random"


def assert_named(text: str, field: str) -> None:
    assert field in text, text
    assert "failed unexpectedly" not in text and "Internal" not in text, text


# ------------------------------------------------------------------ 2: the run cache follows local weights on disk

def _tiny_hf_dir(path, seed: int):
    """A 2-layer GPT-2 with a small in-memory BPE tokenizer, saved as an hf: folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["When Mary and John went out, John gave it to Mary."] * 50, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"],
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval() \
        .save_pretrained(path)
    tok.save_pretrained(path)


NAMES_TASK = {
    "name": "names", "variables": {"A": {"values": ["Mary", "John"]}, "B": {"values": ["Mary", "John"]}},
    "constraints": ["A != B"], "templates": ["When {A} and {B} went out, {B} gave it to"], "answer": " {A}",
    "counterfactuals": [{"name": "swap", "kind": "swap", "variables": ["A", "B"]}], "default_n": 2,
}


async def test_changed_local_weights_are_not_served_from_the_cache(store_dir, tmp_path):
    d = tmp_path / "hfmodel"
    _tiny_hf_dir(d, seed=0)
    args = {"model": f"hf:{d}", "task": "names", "n": 2}
    async with Client(build_server(store_dir)) as c:
        await call(c, "define_task", {**NAMES_TASK, "validate_with_model": f"hf:{d}"})
        first = await finish(c, await call(c, "run_baseline", args))
    async with Client(build_server(store_dir)) as c:  # a fresh server: nothing loaded
        same = await call(c, "run_baseline", args)
        assert same["result"]["cached"] is True and same["result"]["run_id"] == first["run_id"]
    time.sleep(0.01)
    _tiny_hf_dir(d, seed=1)  # new weights, same path
    async with Client(build_server(store_dir)) as c:
        again = await finish(c, await call(c, "run_baseline", args))
        assert again["run_id"] != first["run_id"] and not again.get("cached")
        got = await call(c, "get_run", {"run_id": again["run_id"]})
        assert got["manifest"]["model"]["weight_hash"] != (await call(c, "get_run", {"run_id": first["run_id"]})
                                                            )["manifest"]["model"]["weight_hash"]


# ------------------------------------------------------------------ 3: undefined numbers are null, with a warning

async def test_undefined_effects_are_null_and_explained(store_dir, monkeypatch):
    real = locate.patch_sweep

    def coinciding(*a, **kw):  # clean and counterfactual metrics coincide: every normalised effect is 0/0
        res = real(*a, **kw)
        res.corrupt = res.clean.clone()
        res.patched = res.clean[:, None].repeat(1, res.patched.shape[1]).clone()
        return res

    monkeypatch.setattr(locate, "patch_sweep", coinciding)
    async with Client(build_server(store_dir)) as c:
        out = await call(c, "locate", {"model": TOY, "task": "induction", "n": 4, "layers": [0]})
        res = await finish(c, out)
        cell = res["best_cells"]["resid_pre"][0]
        assert cell["effect"] is None and cell["ci95"] == [None, None]
        assert any("undefined" in w and "null" in w for w in res["warnings"]), res["warnings"]
        assert "undefined" in res["summary"]
        schema = {t.name: t for t in (await c.list_tools()).tools}["locate"].output_schema
        assert "null" in json.dumps(schema)


# ------------------------------------------------------------------ 4: named errors instead of internal ones

@pytest.mark.parametrize("model", ["toy/planted-clean", "toy/planted-correlated-decoy"])
async def test_baseline_on_planted_models(store_dir, model):
    async with Client(build_server(store_dir)) as c:
        res = await finish(c, await call(c, "run_baseline", {"model": model, "task": "planted", "n": 8}))
        assert res["n"] == 8 and res["metrics"]["logit_diff"]["n"] == 8


async def test_baseline_on_planted_direction(store_dir):
    async with Client(build_server(store_dir)) as c:
        res = await finish(c, await call(c, "run_baseline", {"model": "toy/planted-direction",
                                                             "task": "planted-direction", "n": 8}))
        assert res["n"] == 8


@pytest.mark.parametrize("tool, args, field", [
    ("locate", {"task": "induction", "layers": []}, "layers"),
    ("locate", {"task": "induction", "positions": []}, "positions"),
    ("run_baseline", {"task": "induction", "seed": -1}, "seed"),
    ("run_baseline", {"task": "induction", "seed": 2**70}, "seed"),
    ("locate", {"task": "induction", "seed": 2**70}, "seed"),
    ("get_task", {"task": "induction", "seed": -1}, "seed"),
])
async def test_bad_numbers_and_empty_lists_are_named(store_dir, tool, args, field):
    async with Client(build_server(store_dir)) as c:
        assert_named(await call_error(c, tool, {"model": TOY, **args} if tool != "get_task" else args), field)


@pytest.mark.parametrize("tool, args, words", [
    ("get_task", {"name": "ioi"}, ["task: Field required"]),
    ("locate", {"model": TOY, "task": "induction", "metric": "accuracy"}, ["metric: Input should be 'logit_diff'"]),
    ("define_task", {"name": "x", "templates": ["a"], "answer": "b", "variables": {}, "counterfactuals": [],
                     "positions": {"E": {"index": -1}}}, ["positions.E.index: Extra inputs are not permitted"]),
])
async def test_argument_errors_name_the_field_in_one_line(store_dir, tool, args, words):
    """Missing fields, values outside a Literal and unknown keys fail in our validation (one line per field), not in the
    SDK's signature check, whose text is pydantic's raw report ("1 validation error for locateArguments ...")."""
    async with Client(build_server(store_dir)) as c:
        text = await call_error(c, tool, args)
    assert "invalid arguments — " in text and all(w in text for w in words), text
    assert "errors.pydantic.dev" not in text and "Arguments" not in text and "\n" not in text


@pytest.mark.parametrize("template", ["{x:,}{y}{y}:", "{x:{y}}{y}{y}:", "{x:>100000000}{y}{y}:", "{x:=^65}"])
async def test_bad_format_specs_are_named(store_dir, template):
    async with Client(build_server(store_dir)) as c:
        t0 = time.monotonic()
        text = await call_error(c, "define_task", copy_spec(templates=[template]))
        assert_named(text, "templates")
        assert time.monotonic() - t0 < 10
        # get_task renders without a tokenizer: a stored spec cannot get there, but the answer template can
        assert_named(await call_error(c, "define_task", copy_spec(answer="{x:d}")), "templates")


async def test_prompt_errors_are_named():
    from mcp.shared.exceptions import MCPError

    async with Client(build_server()) as c:
        with pytest.raises(MCPError) as e:
            await c.get_prompt("plan_experiment", {})
        assert "question" in str(e.value) and "missing" in str(e.value)
        with pytest.raises(MCPError) as e:
            await c.get_prompt("no_such_prompt", {"question": "q"})
        assert "unknown prompt" in str(e.value) and "plan_experiment" in str(e.value)
        p = await c.get_prompt("plan_experiment", {"question": "Where is IO?"})
        assert "Where is IO?" in p.messages[0].content.text


# ------------------------------------------------------------------ 5: bounded cost per request

async def _timed_list_tasks(c) -> float:
    t0 = time.monotonic()
    await call(c, "list_tasks")
    return time.monotonic() - t0


async def test_huge_powers_are_refused_without_freezing_the_server(store_dir):
    async with Client(build_server(store_dir)) as c:
        times, texts = [], []

        async def hostile():
            texts.append(await call_error(c, "define_task", copy_spec(constraints=["4000000**4000000 > 0"])))
            texts.append(await call_error(c, "define_task", copy_spec(mechanisms={"m": {"expr": "9**9**9"}},
                                                                      templates=["{x}{y}{m}:"])))

        async def other_session():
            for _ in range(5):
                times.append(await _timed_list_tasks(c))
                await anyio.sleep(0.05)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hostile)
                tg.start_soon(other_session)
        assert_named(texts[0], "constraints[0]")
        assert "4096 bits" in texts[0]
        assert "mechanisms.m" in texts[1] or "templates" in texts[1], texts[1]
        assert max(times) < 1.0, times


async def test_huge_ranges_are_sampled_not_listed(store_dir):
    async with Client(build_server(store_dir)) as c:
        for hi in (10**7, 10**12):
            t0 = time.monotonic()
            out = await call(c, "define_task", copy_spec(name=f"big{len(str(hi))}", variables={
                "x": {"values": list("abcdef")}, "y": {"values": list("ghij")}, "k": {"range": [0, hi]}},
                templates=["{x}{y}{y}{k}:"]))
            assert time.monotonic() - t0 < 20
            ks = [int(e["prompt"][3:-1]) for e in out["examples"]]
            assert all(0 <= k <= hi for k in ks) and max(ks) > 1000
        assert_named(await call_error(c, "define_task", copy_spec(variables={
            "x": {"values": list("abcdef")}, "y": {"range": [0, 10**30]}})), "range")


async def test_long_templates_and_inputs_are_refused_quickly_with_short_errors(store_dir):
    async with Client(build_server(store_dir)) as c:
        t0 = time.monotonic()
        text = await call_error(c, "define_task", copy_spec(templates=["{x}{y}{y}:" + "ab" * 30_000]))
        assert_named(text, "templates")
        assert time.monotonic() - t0 < 10
        huge = "z" * (1 << 20)
        for tool, args in [("define_task", copy_spec(name=huge)), ("define_task", copy_spec(constraints=[huge])),
                           ("define_task", copy_spec(mechanisms={"m": {"expr": "x + " + "1" * 5000}})),
                           ("get_task", {"task": huge}), ("get_job", {"job_id": huge, "wait_seconds": 0}),
                           ("run_baseline", {"model": TOY, "task": huge})]:
            text = await call_error(c, tool, args)
            assert len(text) < 4000, (tool, len(text))
            assert "failed unexpectedly" not in text


async def test_repeated_sites_are_deduplicated(store_dir):
    async with Client(build_server(store_dir)) as c:
        res = await finish(c, await call(c, "locate", {"model": TOY, "task": "induction", "n": 4, "layers": [0],
                                                       "sites": ["z"] * 10 + ["resid_pre"] * 5}))
        assert set(res["best_cells"]) == {"z", "resid_pre"}
        assert_named(await call_error(c, "locate", {"model": TOY, "task": "induction", "sites": ["z"] * 1000}),
                     "sites")


# ------------------------------------------------------------------ 6: long-polls hold no worker thread

async def test_many_long_polls_do_not_starve_other_requests(store_dir, monkeypatch):
    real = baseline.compute_baseline

    def slow(model, ds, progress=None, **kw):
        for i in range(300):
            time.sleep(0.05)
            if progress:
                progress(i / 300, "slow")
        return real(model, ds)

    monkeypatch.setattr(baseline, "compute_baseline", slow)
    async with Client(build_server(store_dir)) as c:
        out = await call(c, "run_baseline", {"model": TOY, "task": "induction", "n": 8, "wait_seconds": 0})
        job_id = out["job"]["job_id"]
        times = []
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(60):  # more than anyio's 40 worker threads
                    tg.start_soon(call, c, "get_job", {"job_id": job_id, "wait_seconds": 8})
                await anyio.sleep(1.0)
                for _ in range(3):
                    times.append(await _timed_list_tasks(c))
                    await anyio.sleep(0.2)
        assert max(times) < 1.0, times
        await call(c, "cancel_job", {"job_id": job_id})


# ------------------------------------------------------------------ 9: local model paths confined to roots

async def test_local_model_paths_are_confined_to_roots(store_dir, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (root / "escape.gguf").symlink_to("/etc/hostname")
    async with Client(build_server(store_dir, model_roots=[root])) as c:
        texts = [await call_error(c, "load_model", {"model": m}) for m in
                 ("gguf:/etc/hostname", "gguf:/etc/no-such-file.gguf", f"gguf:{root}/../outside.gguf",
                  f"gguf:{root}/escape.gguf", "hf:/etc", "hf:/no/such/dir")]
        # the same answer whether or not something exists out there: no probing oracle
        assert len({t.replace("hf:", "gguf:") for t in texts}) == 1, texts
        assert_named(texts[0], "model")
        assert "magic" not in texts[0] and "not found" not in texts[0]
        # the run cache's weight check is confined too
        assert_named(await call_error(c, "run_baseline", {"model": "gguf:/etc/hostname", "task": "induction"}),
                     "model")
        inside = await call_error(c, "load_model", {"model": f"gguf:{root}/missing.gguf"})
        assert "not found" in inside


# ------------------------------------------------------------------ 10: built-in tasks stay built-in

async def test_builtin_tasks_cannot_be_overwritten(store_dir):
    async with Client(build_server(store_dir)) as c:
        ioi = (await call(c, "get_task", {"task": "ioi"}))["spec"]
        text = await call_error(c, "define_task", {**ioi, "overwrite": True, "validate_with_model": TOY,
                                                   "description": "hijacked"})
        assert_named(text, "name")
        assert "built-in" in text
    # a file left by an older version does not shadow the built-in either
    (store_dir / "_tasks").mkdir(parents=True, exist_ok=True)
    (store_dir / "_tasks" / "ioi.json").write_text(json.dumps({**ioi, "description": "hijacked"}))
    async with Client(build_server(store_dir)) as c:
        tasks = {t["name"]: t for t in (await call(c, "list_tasks"))["tasks"]}
        assert tasks["ioi"]["builtin"] is True and tasks["ioi"]["description"] != "hijacked"


# ------------------------------------------------------------------ 11: progress through the stages

async def test_progress_moves_through_each_stage(store_dir):
    async with Client(build_server(store_dir)) as c:
        for tool, args, stage in [
            ("run_baseline", {"task": "induction", "n": 8}, "checking counterfactual"),
            ("locate", {"task": "induction", "n": 4}, "bootstrap and plots"),
            ("attribute", {"task": "induction", "n": 4, "method": "exact", "level": "heads"}, "rows run"),
        ]:
            seen = []

            async def on_progress(p, total, message, seen=seen):
                seen.append((p, message))

            await finish(c, await call(c, tool, {"model": TOY, **args, "wait_seconds": 60},
                                       progress_callback=on_progress))
            messages = [m for _, m in seen]
            assert any("loading" in m for m in messages), (tool, messages)
            assert any("ready" in m for m in messages), (tool, messages)
            assert any(stage in m for m in messages), (tool, messages)
            fractions = [p for p, _ in seen]
            assert fractions == sorted(fractions), (tool, seen)
            assert len(set(messages)) >= 4 and any(0.1 < p < 0.9 for p in fractions), (tool, seen)


# ------------------------------------------------------------------ 12: crash debris is swept at startup

async def test_startup_sweeps_staging_debris(store_dir):
    async with Client(build_server(store_dir)) as c:
        done = await finish(c, await call(c, "run_baseline", {"model": TOY, "task": "induction", "n": 4}))
    from mcp_interp.artifacts import ArtifactStore

    store = ArtifactStore(store_dir)
    store.owner = "deadhost:999999:dead"  # a server that was killed mid-run
    handle = store.create_run("locate", "induction", TOY, {"n": 4})
    handle.write_json("partial.json", {"x": 1})
    orphan = store_dir / ".staging" / "20000101-000000-abcdef"  # staging with no index row, old
    orphan.mkdir()
    os.utime(orphan, (time.time() - 3600, time.time() - 3600))
    assert len(list((store_dir / ".staging").iterdir())) == 2
    async with Client(build_server(store_dir)) as c:
        assert list((store_dir / ".staging").iterdir()) == []
        runs = {r["run_id"]: r for r in (await call(c, "list_runs", {"limit": 50}))["runs"]}
        assert runs[handle.run_id]["status"] == "interrupted"
        assert runs[done["run_id"]]["status"] == "complete"
        assert (await call(c, "get_run", {"run_id": done["run_id"]}))["result"]["run_id"] == done["run_id"]


@pytest.mark.parametrize("tool", ["locate", "run_baseline", "attribute", "scrub_hypothesis"])
async def test_a_task_that_does_not_fit_the_model_is_refused_by_name(store_dir, tool):
    """induction's prompts have 11 tokens, toy/planted-clean a context of 8: refused before any work ("task: ... at
    most 8"), not "failed unexpectedly: IndexError" from inside a forward."""
    args = {"model": "toy/planted-clean", "task": "induction", "n": 8}
    if tool == "scrub_hypothesis":
        args["hypothesis"] = "everything"
    async with Client(build_server(store_dir)) as c:
        text = await call_error(c, tool, args)
    assert "task:" in text and "at most 8" in text and "unexpectedly" not in text, text


async def test_undefined_attribution_scores_are_null_with_a_warning(store_dir):
    """planted-direction's prompts on toy/planted-clean: clean and counterfactual metrics coincide, every normalised
    score is 0/0. The run completes with null scores and says why (the output schema rejected NaN before)."""
    async with Client(build_server(store_dir)) as c:
        out = await finish(c, await call(c, "attribute", {"model": "toy/planted-clean", "task": "planted-direction",
                                                          "n": 13, "include_plot": False}))
    assert all(u["score"] is None for u in out["top"])
    assert any("undefined" in w for w in out["warnings"]) and "n/a" in out["summary"]


async def test_diverging_runs_store_null_numbers_with_a_warning(store_dir):
    """An SAE trained to divergence and a steer that overflows the model complete with null (not NaN) numbers the
    client's schema check accepts, and a warning saying why (issue 26 item 8)."""
    feats = "toy/planted-features"
    async with Client(build_server(store_dir)) as c:
        sae = (await call(c, "train_sae", {"model": feats, "site": "resid_pre", "layer": 1, "corpus": "random",
                                           "tokens": 2000, "context": 8, "architecture": "jumprelu",
                                           "sparsity": 1e300, "lr": 1.0, "d_sae": 32, "epochs": 1,
                                           "wait_seconds": 120}))["result"]
        assert sae["learning_curve"][-1]["explained_variance"] is None
        assert any("diverged" in w for w in sae["warnings"])
        ff = (await call(c, "find_features", {"model": feats, "task": "planted-features", "variable": "g",
                                              "source": "neurons", "layer": 1, "n": 16, "n_perm": 19, "test_top": 2,
                                              "interventions": ["steer"], "steer_alpha": 1e308,
                                              "wait_seconds": 120}))["result"]
        assert ff["causal"] and all(r["effect"] is None for r in ff["causal"])
        assert any("undefined" in w and "steer_alpha" in w for w in ff["warnings"])


async def test_cancel_stops_the_comparison_nulls_at_once(store_dir):
    """cancel_job ends compare_features during its CKA / SVCCA permutation nulls within seconds (it ran on for
    minutes: issue 26 item 4); the light tools answer at once meanwhile (item 3: list_jobs took 36 s)."""
    args = {"a": {"model": "toy/planted-features", "source": "neurons", "layer": 1},
            "b": {"model": "toy/planted-features-s1", "source": "neurons", "layer": 1}, "task": "planted-features",
            "variable": "g", "n": 1024, "n_null": 500, "n_perm": 10_000, "test_top": 0, "wait_seconds": 0}
    async with Client(build_server(store_dir)) as c:
        job_id = (await call(c, "compare_features", args))["job"]["job_id"]
        with anyio.fail_after(120):
            while "permutation" not in (job := await call(c, "get_job", {"job_id": job_id}))["message"]:
                assert job["status"] == "running", job
                await anyio.sleep(0.05)
        waits = []
        for _ in range(5):  # the nulls are running: light tools must not wait behind them
            t = time.time()
            assert any(j["job_id"] == job_id for j in (await call(c, "list_jobs", {}))["jobs"])
            waits.append(time.time() - t)
        assert max(waits) < 2.0, waits
        t0 = time.time()
        await call(c, "cancel_job", {"job_id": job_id})
        with anyio.fail_after(60):
            while (job := await call(c, "get_job", {"job_id": job_id, "wait_seconds": 5}))["status"] == "running":
                pass
        assert job["status"] == "cancelled" and time.time() - t0 < 10, (job, time.time() - t0)


async def test_model_validator_and_corpus_refusals_read_as_field_errors(store_dir):
    """A model validator's refusal is the field's own sentence (no 'arguments: Value error,' prefix), and a corpus
    a character-level toy cannot encode says what to use instead (issue 26 item 7)."""
    async with Client(build_server(store_dir)) as c:
        err = await call_error(c, "find_features", {"model": "toy/planted-features", "task": "planted-features",
                                                    "variable": "g", "interventions": ["steer"]})
        assert "invalid arguments — steer_alpha: interventions include 'steer'" in err and "Value error" not in err
        err = await call_error(c, "train_sae", {"model": "toy/tiny-random", "site": "resid_pre", "layer": 1,
                                                "corpus": "shakespeare", "tokens": 2000, "context": 8, "d_sae": 32})
        assert "train_sae: corpus: character" in err and "Fix: corpus='random'" in err and "\n" not in err
