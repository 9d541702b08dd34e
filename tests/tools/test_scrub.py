"""scrub_hypothesis through a real MCP client: identities, planted ground truth, errors, stored artifacts."""

import copy

import pytest
from mcp import Client
from mcp_helpers import call, call_error, finish

from mcp_interp.server.app import build_server

pytestmark = pytest.mark.anyio

XY = [{"name": "x", "value": "x"}, {"name": "y", "value": "y"}]



def planted_hypothesis(mover_head: int = 0, name: str = "true") -> dict:
    """output <- MLP1@END ~ y <- L0H{mover_head}@END ~ x <- embed@X ~ x (the planted circuit for head 0)."""
    return {"name": name, "interp": copy.deepcopy(XY), "output": {"parents": ["mapper"]}, "nodes": [
        {"name": "mapper", "kind": "mlp", "layer": 1, "position": "END", "interp": "y", "parents": ["mover"]},
        {"name": "mover", "kind": "head", "layer": 0, "head": mover_head, "position": "END", "interp": "x",
         "parents": ["emb_x"]},
        {"name": "emb_x", "kind": "embed", "position": "X", "interp": "x"}]}


def _args(model: str, hypothesis, **kw) -> dict:
    return {"model": f"toy/planted-{model}", "task": "planted", "hypothesis": hypothesis, "n": 64, "seeds": 2,
            "wait_seconds": 120, **kw}


async def test_scrub_tool_on_planted(store_dir):
    server = build_server(store_dir)
    async with Client(server) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        schema = tools["scrub_hypothesis"].input_schema
        assert "Hypothesis" in str(schema) and "ModelNode" in str(schema)  # the hypothesis format is published

        out = await finish(c, await call(c, "scrub_hypothesis", _args("clean", "everything", contributions=False)))
        assert out["loss_recovered"]["mean"] == pytest.approx(1.0, abs=1e-4)
        assert out["metric_recovered"]["mean"] == pytest.approx(1.0, abs=1e-4)
        assert len(out["loss_recovered"]["per_seed"]) == 2

        out = await finish(c, await call(c, "scrub_hypothesis", _args("clean", "nothing", contributions=False,
                                                                      ablations=[])))
        assert abs(out["loss_recovered"]["mean"]) < 0.15 and out["loss_random"] > out["loss_model"]

        true = await finish(c, await call(c, "scrub_hypothesis", _args("clean", planted_hypothesis(0))))
        assert true["hypothesis"] == "true"
        assert true["loss_recovered"]["mean"] > 0.99 and true["metric_recovered"]["mean"] > 0.99
        assert set(true["ablations"]) == {"zero", "mean"}
        assert true["ablations"]["mean"]["loss_recovered"]["mean"] > 0.99
        assert true["ablations"]["zero"]["loss_recovered"]["mean"] < 0.5  # off distribution
        assert {k["name"] for k in true["contributions"]} == {"mapper", "mover", "emb_x"}
        assert all(k["drop_effect"] > 0.9 for k in true["contributions"])
        assert set(true["files"]) >= {"hypothesis.json", "hypothesis_graph.png", "recovered_bar.png",
                                      "per_example.safetensors", "result.json"}
        res = await c.read_resource(true["files"]["hypothesis_graph.png"])
        assert res.contents[0].mime_type == "image/png"
        res = await c.read_resource(true["files"]["hypothesis.json"])
        assert '"mover"' in res.contents[0].text
        run = await call(c, "get_run", {"run_id": true["run_id"]})
        assert run["run"]["status"] == "complete"
        again = await call(c, "scrub_hypothesis", _args("clean", planted_hypothesis(0)))
        assert again["result"]["cached"] and again["result"]["run_id"] == true["run_id"]

        decoy = await finish(c, await call(c, "scrub_hypothesis", _args(
            "correlated-decoy", planted_hypothesis(1, "decoy"), contributions=False, ablations=[])))
        assert decoy["loss_recovered"]["mean"] < 0.3

        # Bad hypotheses: the error names the node field and says how to fix it.
        bad = planted_hypothesis(0)
        bad["nodes"][0]["layer"] = 5
        err = await call_error(c, "scrub_hypothesis", _args("clean", bad))
        assert "hypothesis.nodes[0].layer" in err and "out of range" in err and "Fix" in err
        bad = planted_hypothesis(0)
        bad["interp"].append({"name": "z", "value": "zz + 1"})
        err = await call_error(c, "scrub_hypothesis", _args("clean", bad))
        assert "hypothesis.interp[2].value" in err and "unknown name" in err
        bad = planted_hypothesis(0)
        bad["nodes"][0]["interp"] = "nope"
        err = await call_error(c, "scrub_hypothesis", _args("clean", bad))
        assert "hypothesis.nodes[0].interp" in err
        err = await call_error(c, "scrub_hypothesis", _args("clean", "all of it"))
        assert "hypothesis" in err


async def test_description_states_the_token_layout_rule(store_dir):
    """An agent only sees the description: it must say that resampled inputs share the reference's token layout."""
    async with Client(build_server(store_dir)) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    d = tools["scrub_hypothesis"].description
    assert "token layout" in d and "same length" in d and len(d) <= 2048
