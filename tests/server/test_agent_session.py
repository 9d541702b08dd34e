"""An agent session end to end: a scripted agent follows the run_experiment prompt through a real MCP client, on
a task it defines itself, and ends with a report that must cite only runs that exist.

The agent decides each step from what the previous result says (the generator that changes the answer, the
strongest head, the attributed circuit's units, the run ids) and from the task it defined, never from the toy's
ground truth; the test then checks its conclusions against that ground truth (toy/planted-clean: L0H0 moves the
letter to '=', MLP1 maps it to the answer).
"""

from __future__ import annotations

import re

import pytest
from mcp import Client
from mcp_helpers import call, finish

from mcp_interp.artifacts.report import RUN_ID
from mcp_interp.server.app import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_thread")]
MODEL = "toy/planted-clean"
# Defined here, not built in: the planted model's letter-successor behaviour on a subset of its inputs.
TASK = {
    "name": "next-letter-study",
    "description": "'c159=' -> 'd': the letter after the first character; the odd digits are distractors",
    "variables": {"x": {"values": list("abcdef")}, "d1": {"values": list("13579")},
                  "d2": {"values": list("13579")}, "d3": {"values": list("13579")}},
    "mechanisms": {"y": {"lookup": {"a": "b", "b": "c", "c": "d", "d": "e", "e": "f", "f": "g"}, "key": "x"}},
    "templates": ["{x}{d1}{d2}{d3}="],
    "answer": "{y}",
    "counterfactuals": [
        {"name": "new_digits", "kind": "resample", "variables": ["d1", "d2", "d3"], "changes_answer": False},
        {"name": "new_letter", "kind": "resample", "variables": ["x"]}],
    "positions": {"LETTER": {"variable": "x"}},
    "metric": "logit_diff", "default_n": 16,
}
QUESTION = "Which components carry the first letter to the answer?"


async def heavy(c, tool: str, args: dict) -> dict:
    return await finish(c, await call(c, tool, {"model": MODEL, "task": TASK["name"], "wait_seconds": 60, **args}))


async def test_scripted_agent_follows_run_experiment_to_a_report(store_dir):
    async with Client(build_server(store_dir)) as c:
        tools = {t.name for t in (await c.list_tools()).tools}
        prompt = await c.get_prompt("run_experiment", {"question": QUESTION, "model": MODEL, "task": TASK["name"]})
        text = prompt.messages[0].content.text
        named = sorted((m.start(), t) for t in tools for m in re.finditer(rf"\b{t}\(", text))
        steps = list(dict.fromkeys(t for _, t in named))
        # what the agent follows: the baseline gate before any intervention, get_job for long runs, report last
        assert steps.index("run_baseline") < steps.index("locate") and steps[-1] == "report" and "get_job" in steps

        defined = await call(c, "define_task", {**TASK, "validate_with_model": MODEL})
        # the agent contrasts with the generator that changes the answer
        changing = [g for g, st in defined["counterfactuals"].items() if st["answer_changes"] == 1.0]
        assert changing == ["new_letter"]
        written_down: list[str] = []  # "after each tool, write down the run_id"

        base = await heavy(c, "run_baseline", {"n": 16, "counterfactual": changing[0]})
        written_down.append(base["run_id"])
        assert base["solves"], base["verdict"]  # gate 1 (else: stop and report)
        assert all(g["label_changes"] == 1.0 for g in base["counterfactual_checks"] if g["generator"] in changing)

        loc = await heavy(c, "locate", {"counterfactual": changing[0], "sites": ["resid_pre", "z"],
                                        "positions": "named", "n": 12})
        written_down.append(loc["run_id"])
        head = max(loc["best_cells"]["z"], key=lambda cell: abs(cell["effect"]))
        assert head["ci95"][0] > 0  # gate 2: an effect whose CI excludes 0
        head_position = head["position"].split()[-1]  # labels may carry the token index: '4 END' -> 'END'

        units = {}
        for level in ("heads", "mlps"):
            attr = await heavy(c, "attribute", {"level": level, "counterfactual": changing[0], "n": 12})
            written_down.append(attr["run_id"])
            units[level] = attr["circuit"]["units"]
        assert units["heads"] == [f"L{head['layer']}H{head['head']}"]  # attribution agrees with locate
        mlp_layer = int(re.fullmatch(r"MLP(\d+)", units["mlps"][0]).group(1))

        hypothesis = {"name": "mover-then-mapper", "interp": [{"name": "x", "value": "x"}, {"name": "y", "value": "y"}],
                      "output": {"parents": ["mapper"]}, "nodes": [
                          {"name": "mapper", "kind": "mlp", "layer": mlp_layer, "position": head_position,
                           "interp": "y", "parents": ["mover"]},
                          {"name": "mover", "kind": "head", "layer": head["layer"], "head": head["head"],
                           "position": head_position, "interp": "x", "parents": ["letter"]},
                          {"name": "letter", "kind": "embed", "position": "LETTER", "interp": "x"}]}
        scrub = await heavy(c, "scrub_hypothesis", {"hypothesis": hypothesis, "n": 32, "seeds": 1})
        written_down.append(scrub["run_id"])

        rep = await call(c, "report", {"run_ids": written_down, "title": QUESTION})
        cited = set(RUN_ID.findall(rep["markdown"]))
        stored = {r["run_id"]: r for r in (await call(c, "list_runs", {"limit": 500}))["runs"]}
        assert cited <= set(stored), cited - set(stored)  # only runs that exist ...
        assert all(stored[r]["status"] == "complete" for r in cited)
        assert set(written_down) | {rep["run_id"]} == cited  # ... and every run the agent wrote down
        stored_md = await c.read_resource(rep["files"]["report.md"])
        assert stored_md.contents[0].text == rep["markdown"]

    # The agent's findings are the planted circuit (ground truth of toy/planted-clean).
    assert (head["layer"], head["head"], head_position) == (0, 0, "END") and mlp_layer == 1
    assert scrub["loss_recovered"]["mean"] == pytest.approx(1.0, abs=0.05)
    # the task's first generator keeps the answer, so the logit-difference fraction is 0/0: null, and said so
    assert scrub["metric_recovered"]["mean"] is None and any("undefined" in w for w in scrub["warnings"])
