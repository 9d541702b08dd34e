"""The attribute tool through MCP: planted circuits and the trained induction model."""

import numpy as np
import pytest
from mcp import Client
from mcp_helpers import call, call_error, finish

from mcp_interp.server.app import build_server

pytestmark = pytest.mark.anyio



# ------------------------------------------------------------------ the MCP tool

async def test_attribute_tool_on_planted(store_dir):
    server = build_server(store_dir)
    async with Client(server) as c:
        tasks = await call(c, "list_tasks")
        assert "planted" in [t["name"] for t in tasks["tasks"]]
        out = await finish(c, await call(c, "attribute", {
            "model": "toy/planted-saturated-decoy", "task": "planted", "method": "atp", "level": "heads",
            "n": 8, "compare_exact": True, "wait_seconds": 120}))
        top = {u["name"]: u["score"] for u in out["top"]}
        assert top["L0H1"] > 1.5 and abs(out["comparison_with_exact"]["exact_scores"]["L0H1"]) < 0.02
        assert out["comparison_with_exact"]["exact_scores"]["L0H0"] > 0.95
        f = out["faithfulness"]
        assert f["fractions"][-1] == 1.0 and f["signed"][-1] == pytest.approx(1.0, abs=1e-4)
        # CPR/CMD recomputed from the stored curves.
        assert f["cpr"] == pytest.approx(float(np.trapezoid(f["signed"], f["fractions"])), abs=1e-3)
        assert f["cmd"] == pytest.approx(float(np.trapezoid(np.abs(1 - np.array(f["absolute"])), f["fractions"])),
                                         abs=1e-3)
        assert set(out["files"]) >= {"heads_heatmap.png", "faithfulness.png", "circuit.png", "scores.safetensors"}
        res = await c.read_resource(out["files"]["faithfulness.png"])
        assert res.contents[0].mime_type == "image/png"

        # Edges with EAP-IG on the planted clean model: the circuit is the three planted edges.
        out = await finish(c, await call(c, "attribute", {
            "model": "toy/planted-clean", "task": "planted", "method": "eap_ig", "level": "edges", "n": 8,
            "wait_seconds": 120}))
        assert {u["name"] for u in out["top"][:3]} == {"embed->L0H0.v", "L0H0->MLP1", "MLP1->logits"}
        assert out["circuit"]["faithfulness"] == pytest.approx(1.0, abs=1e-3) and out["circuit"]["size"] <= 6
        run = await call(c, "get_run", {"run_id": out["run_id"]})
        assert run["run"]["status"] == "complete" and run["result"]["circuit"] == out["circuit"]

        # Bad input: clear errors naming the field.
        err = await call_error(c, "attribute", {"model": "toy/planted-clean", "task": "planted", "method": "eap",
                                                "level": "heads"})
        assert "method" in err and "edges" in err
        err = await call_error(c, "attribute", {"model": "toy/planted-clean", "task": "planted", "level": "neurons"})
        assert "layer" in err
        err = await call_error(c, "attribute", {"model": "toy/planted-clean", "task": "planted", "level": "heads",
                                                "layer": 7})
        assert "layer" in err


async def test_attribute_finds_the_trained_induction_heads(store_dir):
    """On the 2-layer attention-only model trained here: exact head patching of the repeated token (x6 ->
    another letter) puts the induction head in layer 1 on top and a previous-token head in layer 0 second."""
    from mcp_interp.models.toy import build_toy, get_toy
    from mcp_interp.toymodels.trained import induction_heads

    model, _ = build_toy(get_toy("toy/induction-2l"))
    roles = induction_heads(model)
    server = build_server(store_dir)
    async with Client(server) as c:
        out = await finish(c, await call(c, "attribute", {
            "model": "toy/induction-2l", "task": "induction", "method": "atp", "level": "heads", "n": 32,
            "compare_exact": True, "wait_seconds": 300}))
    exact = out["comparison_with_exact"]["exact_scores"]
    ranked = sorted(exact, key=lambda k: -abs(exact[k]))
    best1 = max((k for k in exact if k.startswith("L1")), key=lambda k: exact[k])
    best0 = max((k for k in exact if k.startswith("L0")), key=lambda k: exact[k])
    assert best1 == f"L1H{roles['induction_head']['head']}" or exact[best1] > 0.3
    assert ranked[0].startswith("L1") and exact[best0] > 0.05
    assert out["comparison_with_exact"]["pearson"] > 0.8


async def test_attribute_atp_star_agrees_with_exact_behind_a_saturated_softmax(store_dir):
    """toy/planted-switch through MCP: the selector head's effect runs through a saturated softmax downstream.
    Plain AtP scores it ~0, exact patching 1; AtP* (QK fix) agrees with exact on every head and on the q/k/v
    input units, and on exact patching's scale (the reader in the last of 3 layers is 1, not 1.5)."""
    async with Client(build_server(store_dir)) as c:
        base = {"model": "toy/planted-switch", "task": "planted-switch", "n": 8, "wait_seconds": 120}
        atp = await finish(c, await call(c, "attribute", {**base, "method": "atp", "faithfulness": False}))
        atp_scores = {u["name"]: u["score"] for u in atp["top"]}
        assert abs(atp_scores.get("L0H0", 0.0)) < 0.01
        out = await finish(c, await call(c, "attribute", {**base, "method": "atp_star", "compare_exact": True}))
        star = {u["name"]: u["score"] for u in out["top"]}
        exact = out["comparison_with_exact"]["exact_scores"]
        assert exact["L0H0"] == pytest.approx(1.0, abs=1e-3) and exact["L2H0"] == pytest.approx(1.0, abs=1e-3)
        for unit, v in exact.items():
            assert star.get(unit, 0.0) == pytest.approx(v, abs=1e-3), unit
        cmp = out["comparison_with_exact"]
        assert cmp["top_k"] == 1 and cmp["top_k_overlap"] == 1.0 and cmp["top_k_chance"] == pytest.approx(1 / 6)
        assert "atp_star" in out["summary"] and "top-1 overlap" in out["summary"]
        out = await finish(c, await call(c, "attribute", {**base, "method": "atp_star", "level": "qkv",
                                                          "compare_exact": True}))
        star = {u["name"]: u["score"] for u in out["top"]}
        exact = out["comparison_with_exact"]["exact_scores"]
        assert exact["L2H0.q"] == pytest.approx(1.0, abs=1e-3) and star["L2H0.q"] == pytest.approx(1.0, abs=1e-3)
        assert exact["L0H0.v"] == pytest.approx(1.0, abs=1e-3) and star["L0H0.v"] == pytest.approx(1.0, abs=1e-3)
        assert out["n_units"] == 18 and out["circuit"]["faithfulness"] == pytest.approx(1.0, abs=1e-3)


async def test_attribute_flags_an_uninformative_faithfulness_curve(store_dir):
    """The neurons of MLP0 in toy/planted-clean are inert: with all of them taken from the counterfactual the model
    still behaves like the clean run (f(empty) = 1), so no circuit of them means anything. The tool says so instead
    of reporting 'circuit of 1 unit has faithfulness 1.00'."""
    async with Client(build_server(store_dir)) as c:
        out = await finish(c, await call(c, "attribute", {
            "model": "toy/planted-clean", "task": "planted", "method": "atp", "level": "neurons", "layer": 0, "n": 8,
            "compare_exact": True, "wait_seconds": 120}))
    assert out["faithfulness"]["empty"] == pytest.approx(1.0, abs=1e-4)
    assert out["circuit"]["uninformative"] is True and out["circuit"]["size"] == 0 and out["circuit"]["units"] == []
    assert "uninformative" in out["summary"] and any("uninformative" in w for w in out["warnings"])
    assert "circuit.png" not in out["files"]
    assert out["comparison_with_exact"]["top_k"] == 3  # 10% of 32 neurons, not min(10, 32)


async def test_attribute_dla_through_mcp(store_dir):
    """method=dla on toy/planted-switch: the reader L2H0 writes the answer straight to the logits (dla score = exact
    patching's, 1; raw DLA +6 logits on the clean inputs), the selector L0H0 acts only through the reader (exact 1,
    dla 0); the per-source split puts the reader's 6 logits on the letters it attends to. Refusals: positions have no
    direct effect, prob_diff is not linear in the logits."""
    import base64
    import json

    async with Client(build_server(store_dir)) as c:
        out = await finish(c, await call(c, "attribute", {
            "model": "toy/planted-switch", "task": "planted-switch", "method": "dla", "level": "heads", "n": 8,
            "compare_exact": True, "wait_seconds": 120}))
        score = {u["name"]: u["score"] for u in out["top"]}
        exact = out["comparison_with_exact"]["exact_scores"]
        assert score["L2H0"] == pytest.approx(exact["L2H0"], abs=1e-3) and score["L2H0"] == pytest.approx(1.0, abs=1e-3)
        assert exact["L0H0"] == pytest.approx(1.0, abs=1e-3) and abs(score.get("L0H0", 0.0)) < 1e-3
        d = out["direct"]
        reader = next(u for u in d["units"] if u["name"] == "L2H0")
        assert reader["direct"] == pytest.approx(6.0, abs=1e-3) and reader["ci95"][0] <= 6.0 + 1e-3
        assert d["identity_error"] < 1e-4 and d["other"]["embed"] == pytest.approx(0.0, abs=1e-6)
        assert d["source_positions"] == ["S", "U", "W", "END", "rest"]
        src = d["sources"]["L2H0"]
        assert src["U"] + src["W"] == pytest.approx(6.0, abs=1e-3)
        assert max(abs(src["S"]), abs(src["END"]), abs(src["rest"])) < 1e-3
        assert any("not patching" in w for w in out["warnings"])
        assert "logits direct" in out["summary"] and "Next:" in out["summary"]
        assert {"heads_heatmap.png", "dla_sources.png", "scores.json"} <= set(out["files"])
        blob = await c.read_resource(out["files"]["scores.json"])
        scores = json.loads(blob.contents[0].text if hasattr(blob.contents[0], "text")
                            else base64.b64decode(blob.contents[0].blob))
        units = scores["units"]
        assert scores["direct"]["mean"][units.index("L2H0")] == pytest.approx(6.0, abs=1e-3)
        assert len(scores["direct_sources"]["direct"]) == len(units) == 6
        ds = scores["direct_sources"]
        per_source = dict(zip(ds["positions"], ds["score"][units.index("L2H0")]))
        assert per_source["U"] + per_source["W"] == pytest.approx(1.0, abs=1e-3) and abs(per_source["S"]) < 1e-3

        # toy/planted-clean: no head writes the answer (the mover's output is read by MLP1): all heads score 0 and
        # the warning names MLP1 as the component that does
        out = await finish(c, await call(c, "attribute", {"model": "toy/planted-clean", "task": "planted",
                                                          "method": "dla", "n": 8, "faithfulness": False}))
        assert max(abs(u["score"]) for u in out["top"]) < 1e-4
        assert any("largest direct term is MLP1" in w for w in out["warnings"]), out["warnings"]

        err = await call_error(c, "attribute", {"model": "toy/planted-switch", "task": "planted-switch",
                                                "method": "dla", "level": "positions"})
        assert "level: dla" in err and "heads" in err
        err = await call_error(c, "attribute", {"model": "toy/planted-clean", "task": "greater-than",
                                                "method": "dla", "level": "heads"})
        assert "metric: dla" in err and "logit_diff" in err and "prob_diff" in err
