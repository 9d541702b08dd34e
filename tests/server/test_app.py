"""The MCP surface through a real in-process MCP Client: listing, tasks, baseline, jobs, store, resources."""

import time

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_helpers import call, call_error, copy_spec, finish

from mcp_interp.server.app import build_server
from mcp_interp.tasks.builtin import BUILTIN_TASKS
from mcp_interp.tools import TOOLS, baseline

pytestmark = pytest.mark.anyio
TOY = "toy/tiny-random"


async def test_lists_tools_prompts_resources(store_dir):
    async with Client(build_server(store_dir)) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        for name in ["define_task", "list_tasks", "get_task", "run_baseline", "list_models", "load_model",
                     "list_runs", "get_run", "get_job", "cancel_job", "list_jobs"]:
            assert name in tools
            assert len(tools[name].description) < 2000  # Claude Code truncates at about 2 KB
        # flat arguments from the pydantic input model, output schema from the output model
        props = tools["run_baseline"].input_schema["properties"]
        assert {"model", "task", "n", "seed", "wait_seconds"} <= set(props)
        assert tools["run_baseline"].output_schema is not None
        assert "variables" in tools["define_task"].input_schema["properties"]
        prompts = {p.name for p in (await c.list_prompts()).prompts}
        assert prompts == {"plan_experiment", "run_experiment", "interpret_experiment"}
        p = await c.get_prompt("plan_experiment", {"question": "Where is IO?", "model": "smollm2-135m", "task": "ioi"})
        assert "Where is IO?" in p.messages[0].content.text and "Gate 1" in p.messages[0].content.text
        templates = [t.uri_template for t in (await c.list_resource_templates()).resource_templates]
        assert "artifact://{run_id}/{name}.png" in templates


async def test_server_publishes_the_tool_registry(store_dir):
    async with Client(build_server(store_dir)) as c:
        tools = (await c.list_tools()).tools
    assert [(t.name, t.description, t.annotations.read_only_hint) for t in tools] == [
        (s.name, s.description, s.read_only) for s in TOOLS]


async def test_list_models_shows_loaded_models(store_dir):
    async with Client(build_server(store_dir)) as c:
        assert (await call(c, "list_models"))["loaded"] == []
        loaded = await call(c, "load_model", {"model": TOY})
        out = await call(c, "list_models")
        assert [m["id"] for m in out["loaded"]] == [TOY]
        assert out["loaded"][0]["weight_hash"] == loaded["weight_hash"]
        assert any(m["id"] == TOY and m["loaded"] for m in out["models"])


async def test_task_tools(store_dir):
    async with Client(build_server(store_dir)) as c:
        names = {t["name"] for t in (await call(c, "list_tasks"))["tasks"]}
        assert set(BUILTIN_TASKS) <= names
        got = await call(c, "get_task", {"task": "induction", "model": TOY, "n_examples": 2})
        assert len(got["examples"]) == 2 and got["examples"][0]["positions"]["END"] == 10
        out = await call(c, "define_task", {**copy_spec(), "validate_with_model": TOY})
        assert out["name"] == "toy-copy" and out["examples"][0]["answer"] == out["examples"][0]["prompt"][0]
        assert "toy-copy" in {t["name"] for t in (await call(c, "list_tasks"))["tasks"]}
        # a second define with the same name needs overwrite
        assert "overwrite" in await call_error(c, "define_task", {**copy_spec(), "validate_with_model": TOY})


@pytest.mark.parametrize("over, needle", [
    ({"templates": ["{x}{z}:"]}, "templates[0]"),
    ({"answer": "{y}"}, "counterfactuals.rx"),
    ({"mechanisms": {"m": {"expr": "__import__('os').system('true')"}}}, "mechanisms.m"),
    ({"positions": {"Q": {"text": "?"}}}, "positions.Q"),
    ({"variables": {"x": {"values": ["a"]}}}, "variables"),
    ({"counterfactuals": [{"name": "s", "kind": "swap", "variables": ["x"]}]}, "counterfactuals.s"),
    ({"templates": ["{x}{y}{y}:Ü"]}, "templates"),
    ({"name": "Bad Name"}, "name"),
    ({"metric": "vibes"}, "metric"),
])
async def test_bad_specs_are_error_results_naming_the_field(store_dir, over, needle):
    async with Client(build_server(store_dir)) as c:
        text = await call_error(c, "define_task", {**copy_spec(**over), "validate_with_model": TOY})
        assert needle in text, text
        # the server keeps answering
        assert (await call(c, "list_tasks"))["tasks"]


async def test_unknown_task_model_and_counterfactual(store_dir):
    async with Client(build_server(store_dir)) as c:
        assert "unknown task" in await call_error(c, "run_baseline", {"model": TOY, "task": "nope"})
        text = await call_error(c, "run_baseline", {"model": "no-such-model", "task": "induction"})
        assert "model" in text and "smollm2-135m" in text
        text = await call_error(c, "run_baseline", {"model": TOY, "task": "induction", "counterfactual": "zzz"})
        assert "counterfactual" in text and "resample_x6" in text
        assert "n" in await call_error(c, "run_baseline", {"model": TOY, "task": "induction", "n": 0})


async def test_baseline_on_toy_model_with_progress_store_and_resources(store_dir):
    seen = []

    async def on_progress(p, total, message):
        seen.append((p, message))

    async with Client(build_server(store_dir)) as c:
        out = await call(c, "run_baseline", {"model": TOY, "task": "induction", "n": 24, "wait_seconds": 60},
                         progress_callback=on_progress)
        res = await finish(c, out)
        assert seen and all(0 <= p <= 1 for p, _ in seen)
        # a random 2-layer model cannot do induction: the verdict must say so
        assert res["solves"] is False and "does not solve" in res["verdict"]
        assert res["n"] == 24 and res["metrics"]["logit_diff"]["n"] == 24
        lo, hi = res["metrics"]["logit_diff"]["ci95"]
        assert lo <= res["metrics"]["logit_diff"]["mean"] <= hi
        assert [ch["generator"] for ch in res["counterfactual_checks"]] == ["resample_x6"]
        assert res["counterfactual_checks"][0]["label_changes"] == 1.0
        # the run is stored and indexed
        runs = (await call(c, "list_runs", {"task": "induction"}))["runs"]
        assert runs[0]["run_id"] == res["run_id"] and runs[0]["status"] == "complete"
        got = await call(c, "get_run", {"run_id": res["run_id"]})
        assert got["manifest"]["model"]["id"] == TOY and got["manifest"]["params"]["n"] == 24
        assert got["manifest"]["model"]["dtype"] == "float32" and got["manifest"]["model"]["device"] in ("cpu", "cuda")
        assert "examples.json" in got["files"]
        # files are resources
        r = await c.read_resource(f"artifact://{res['run_id']}/examples.json")
        assert '"prompt"' in r.contents[0].text
        png = await c.read_resource(f"artifact://{res['run_id']}/metric_hist.png")
        assert png.contents[0].blob
        # the same request twice returns the stored run
        again = await call(c, "run_baseline", {"model": TOY, "task": "induction", "n": 24})
        assert again["result"]["run_id"] == res["run_id"] and again["result"]["cached"] is True


async def test_resources_refuse_paths_outside_the_run(store_dir):
    async with Client(build_server(store_dir)) as c:
        res = await finish(c, await call(c, "run_baseline", {"model": TOY, "task": "induction", "n": 8}))
        for uri in [f"artifact://{res['run_id']}/..%2F..%2Findex.json", f"artifact://{res['run_id']}/nope.json",
                    "artifact://20990101-000000-abcdef/result.json"]:
            with pytest.raises(MCPError, match="Unknown resource|Error creating resource") as e:
                await c.read_resource(uri)
            assert "run_baseline" not in str(e.value)  # nothing of a file's content comes back
        assert (await call(c, "list_tasks"))["tasks"]


async def test_cancel_job(store_dir, monkeypatch):
    real = baseline.compute_baseline

    def slow(model, ds, progress=None, **kw):
        for i in range(40):  # a slow, cancellable stand-in for the forward passes
            time.sleep(0.1)
            if progress:
                progress(i / 40, "slow")
        return real(model, ds)

    monkeypatch.setattr(baseline, "compute_baseline", slow)
    async with Client(build_server(store_dir)) as c:
        out = await call(c, "run_baseline", {"model": TOY, "task": "induction", "n": 8, "wait_seconds": 0.3})
        assert out["status"] == "running"
        job_id = out["job"]["job_id"]
        await call(c, "cancel_job", {"job_id": job_id})
        job = await call(c, "get_job", {"job_id": job_id, "wait_seconds": 20})
        assert job["status"] == "cancelled"
        assert not (await call(c, "list_runs", {"status": "complete"}))["runs"]


async def test_restarted_server_serves_finished_runs_and_jobs(store_dir):
    async with Client(build_server(store_dir)) as c:
        out = await call(c, "run_baseline", {"model": TOY, "task": "induction", "n": 8, "wait_seconds": 0})
        res = await finish(c, out)
        job_id = out["job"]["job_id"] if out.get("job") else None
    async with Client(build_server(store_dir)) as c:
        got = await call(c, "get_run", {"run_id": res["run_id"]})
        assert got["result"]["run_id"] == res["run_id"]
        again = await call(c, "run_baseline", {"model": TOY, "task": "induction", "n": 8})
        assert again["result"]["cached"] is True
        if job_id:
            job = await call(c, "get_job", {"job_id": job_id, "wait_seconds": 0})
            assert job["status"] == "complete" and job["result"]["run_id"] == res["run_id"]


async def test_redefined_task_is_not_served_from_the_cache(store_dir):
    async with Client(build_server(store_dir)) as c:
        await call(c, "define_task", {**copy_spec(), "validate_with_model": TOY})
        args = {"model": TOY, "task": "toy-copy", "n": 8}
        first = await finish(c, await call(c, "run_baseline", args))
        assert (await call(c, "run_baseline", args))["result"]["cached"] is True
        await call(c, "define_task", {**copy_spec(templates=["{y}{x}{y}:"]), "validate_with_model": TOY,
                                      "overwrite": True})
        again = await finish(c, await call(c, "run_baseline", args))
        assert again["run_id"] != first["run_id"] and not again.get("cached")
