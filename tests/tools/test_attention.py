"""attention through a real MCP client: the planted heads attend where they were built to, the name movers that
locate finds on SmolLM2 IOI prefer IO over S1, and bad input is refused by field."""

import base64
import json

import numpy as np
import pytest
from mcp import Client
from mcp_helpers import call, call_error, copy_spec, finish

from mcp_interp.server.app import build_server
from mcp_interp.toymodels.planted import role_heads

pytestmark = pytest.mark.anyio


async def _json(c, run_id: str, name: str) -> dict:
    blob = await c.read_resource(f"artifact://{run_id}/{name}")
    return json.loads(blob.contents[0].text)


async def _error(c, tool: str, args: dict) -> str:
    """The refusal as the agent reads it, without the client's 'Error executing tool ...: ' prefix."""
    return (await call_error(c, tool, args)).removeprefix(f"Error executing tool {tool}: ")


async def test_planted_mover_attends_from_end_to_x_and_ranks_first(store_dir):
    """toy/planted-clean: the mover (role_heads) attends from '=' (END) to X (position 0) with weight ~1 on every
    prompt and ranks first; the stored files, the patterns plot and a concrete Next step come with it."""
    mover = f"L0H{role_heads(0)['mover']}"
    async with Client(build_server(store_dir)) as c:
        res = await finish(c, await call(c, "attention", {"model": "toy/planted-clean", "task": "planted", "n": 12,
                                                          "wait_seconds": 120}))
        stored = await _json(c, res["run_id"], "attention.json")
    top = res["top"][0]
    assert top["head"] == mover and res["n_heads"] == 8 and res["to_positions"] == ["X"]
    assert top["attention"]["X"]["mean"] > 0.99 and top["attention"]["X"]["ci95"][0] > 0.99
    assert res["top"][1]["score"] < 0.9  # every other head of the clean regime is inert
    assert {"attention_heatmap.png", "patterns.png", "attention.json", "attention.safetensors"} <= set(res["files"])
    assert " Next: attribute(task='planted'" in res["summary"] and mover in res["summary"]
    assert stored["order"][0] == mover and len(stored["prompts"]) == 12


async def test_planted_switch_reader_preference_follows_the_selector_mix(store_dir):
    """toy/planted-switch: the reader L2H0 attends to U when s = p and to W when s = q, so with prefer=[U, W] its
    mean difference is (share of p) - (share of q) of the prompts actually drawn (read back from the run), and the
    share of prompts where it is > 0 is the share of p."""
    async with Client(build_server(store_dir)) as c:
        res = await finish(c, await call(c, "attention", {"model": "toy/planted-switch", "task": "planted-switch",
                                                          "n": 16, "seed": 3, "prefer": ["U", "W"],
                                                          "wait_seconds": 120}))
        prompts = (await _json(c, res["run_id"], "attention.json"))["prompts"]
    p_share = np.mean([p[0] == "p" for p in prompts])
    assert 0 < p_share < 1
    reader = next(h for h in res["top"] if h["head"] == "L2H0")
    assert reader["score"] == pytest.approx(2 * p_share - 1, abs=1e-3)
    assert reader["positive_share"] == pytest.approx(p_share)
    assert reader["attention"]["U"]["mean"] == pytest.approx(p_share, abs=1e-3)
    assert res["prefer"] == ["U", "W"] and "U" in res["to_positions"] and "W" in res["to_positions"]


async def test_refusals_name_the_field(store_dir):
    async with Client(build_server(store_dir)) as c:
        text = await _error(c, "attention", {"model": "toy/planted-clean", "task": "planted",
                                                 "to_positions": ["IO"]})
        assert text.startswith("to_positions: 'IO' is not a position of task 'planted'") and "X, END" in text
        text = await _error(c, "attention", {"model": "toy/planted-clean", "task": "planted",
                                                 "from_position": "S2"})
        assert text.startswith("from_position:") and "X, END" in text
        text = await _error(c, "attention", {"model": "toy/planted-clean", "task": "planted", "from_position": "X"})
        assert text.startswith("to_positions: task 'planted' names no position besides from_position 'X'")
        text = await _error(c, "attention", {"model": "toy/planted-clean", "task": "planted",
                                                 "prefer": ["X", "X"]})
        assert text.startswith("prefer:")
        text = await _error(c, "attention", {"model": "toy/planted-clean", "task": "planted",
                                                 "heads": ["L0H0", "L2H0"], "wait_seconds": 60})
        assert text.startswith("heads: 'L2H0' is not a head of toy/planted-clean (2 layers of 4 query heads)")
        assert "L1H3" in text
        text = await _error(c, "attention", {"model": "toy/planted-clean", "task": "planted", "layers": [5],
                                                 "wait_seconds": 60})
        assert text.startswith("layers: 5 out of range")
        spec = copy_spec(name="no-positions")
        spec.pop("positions")
        await call(c, "define_task", spec)
        text = await _error(c, "attention", {"model": "toy/tiny-random", "task": "no-positions"})
        assert text.startswith("task: task 'no-positions' has no named positions")


async def test_selected_heads_and_the_stored_tensors(store_dir):
    """heads= reads only those heads, in the ranking's order; the stored weights are the per-prompt numbers whose
    mean the result reports."""
    from safetensors.torch import load

    async with Client(build_server(store_dir)) as c:
        res = await finish(c, await call(c, "attention", {"model": "toy/planted-clean", "task": "planted", "n": 8,
                                                          "heads": ["L1H2", "L0H0"], "wait_seconds": 120}))
        blob = await c.read_resource(f"artifact://{res['run_id']}/attention.safetensors")
    t = load(base64.b64decode(blob.contents[0].blob))
    assert [h["head"] for h in res["top"]] == ["L0H0", "L1H2"] and res["n_heads"] == 2
    assert t["weights"].shape == (8, 2, 1)
    assert float(t["weights"][:, 1, 0].mean()) == pytest.approx(res["top"][0]["attention"]["X"]["mean"], abs=1e-4)


@pytest.mark.slow
async def test_smollm2_name_movers_located_by_locate_prefer_io_over_s1(store_dir):
    """SmolLM2 IOI: locate (z at END, the counterfactual that resamples IO, late layers) names the heads whose output
    carries the IO name; those of them that attend to the names at all attend from END to IO more than to S1,
    each with its CI above 0. Measured (n=8): L23H0 +0.52, L23H7 +0.46, L23H2 +0.34, L23H1 +0.35; L29H1 has a
    large effect but attends to neither name (it reads the name from elsewhere), so it is not a name mover."""
    from safetensors.torch import load

    async with Client(build_server(store_dir)) as c:
        loc = await finish(c, await call(c, "locate", {"task": "ioi", "n": 8, "sites": ["z"], "positions": ["END"],
                                                       "variable": "IO", "layers": list(range(20, 30)),
                                                       "wait_seconds": 300}))
        blob = await c.read_resource(f"artifact://{loc['run_id']}/effects.safetensors")
        t = load(base64.b64decode(blob.contents[0].blob))
        mean, lo = t["z.mean"].numpy()[:, 0], t["z.lo"].numpy()[:, 0]  # [layer, head]
        order = [i for i in np.argsort(-mean.ravel()) if lo.ravel()[i] > 0][:5]
        heads = [f"L{loc['layers'][i // mean.shape[1]]}H{i % mean.shape[1]}" for i in order]
        assert len(heads) == 5, (heads, mean.max())
        res = await finish(c, await call(c, "attention", {"task": "ioi", "n": 16, "heads": heads,
                                                          "prefer": ["IO", "S1"], "wait_seconds": 300}))
    readers = [h for h in res["top"] if h["attention"]["IO"]["mean"] + h["attention"]["S1"]["mean"] > 0.05]
    assert len(readers) >= 3, res["top"]
    for h in readers:
        assert h["score"] > 0 and h["score_ci95"][0] > 0, h
        assert h["positive_share"] >= 0.75, h
