"""End to end as an agent sees it: `mcp-interp serve` over stdio as a subprocess, and IOI on SmolLM2."""

import sys

import pytest
from mcp import Client, StdioServerParameters
from mcp_helpers import HttpServer, call, call_error, finish, png_of

pytestmark = pytest.mark.anyio



def stdio_params(store_dir) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable,
                                 args=["-m", "mcp_interp.server.cli", "--store", str(store_dir), "serve"])


async def test_stdio_subprocess_toy(store_dir):
    async with Client(stdio_params(store_dir)) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"define_task", "run_baseline", "get_job"} <= names
        assert {p.name for p in (await c.list_prompts()).prompts} >= {"plan_experiment"}
        text = await call_error(c, "define_task", {"name": "x", "variables": {}, "templates": ["a"], "answer": "a",
                                                   "counterfactuals": [], "validate_with_model": "toy/tiny-random"})
        assert "variables" in text or "counterfactuals" in text
        res = await finish(c, await call(c, "run_baseline", {"model": "toy/tiny-random", "task": "induction", "n": 8}))
        assert res["n"] == 8
        r = await c.read_resource(f"artifact://{res['run_id']}/result.json")
        assert res["run_id"] in r.contents[0].text
        assert png_of(await c.call_tool("get_run", {"run_id": res["run_id"]})) is not None  # the image crosses stdio


@pytest.mark.slow
async def test_smollm2_ioi_over_stdio(store_dir):
    async with Client(stdio_params(store_dir), read_timeout_seconds=600) as c:
        out = await call(c, "run_baseline", {"model": "smollm2-135m", "task": "ioi", "n": 16, "wait_seconds": 90})
        res = await finish(c, out)
        assert res["solves"] is True, res["verdict"]
        ld = res["metrics"]["logit_diff"]
        assert ld["mean"] > 3.0 and ld["ci95"][0] > 2.0
        assert res["metrics"]["cf_logit_diff"]["mean"] < -3.0
        assert res["primary_accuracy"]["mean"] >= 0.9
        s2 = next(ch for ch in res["counterfactual_checks"] if ch["generator"] == "s2_swap")
        assert s2["label_changes"] == 1.0 and s2["model_follows"]["mean"] >= 0.8
        # a malformed spec against the real tokenizer: multi-token answers are named
        bad = {"name": "longnames", "variables": {"who": {"values": ["Maximilian", "Bartholomew", "Mary"]}},
               "templates": ["This is {who}. Say hi to"], "answer": " {who}", "default_n": 3,
               "counterfactuals": [{"name": "r", "kind": "resample", "variables": ["who"]}]}
        text = await call_error(c, "define_task", bad)
        assert "answer" in text and "single token" in text
        assert (await call(c, "list_tasks"))["tasks"]


async def test_http_transport_on_loopback(store_dir):
    with HttpServer(store_dir) as server:
        async with Client(server.url) as c:
            assert {"locate", "run_baseline"} <= {t.name for t in (await c.list_tools()).tools}
            out = await call(c, "list_models")
            assert any(m["id"] == "smollm2-135m" for m in out["models"])
            loaded = await call(c, "load_model", {"model": "toy/tiny-random"})
            assert loaded["config"]["n_layers"] == 2

