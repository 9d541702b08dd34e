"""benchmarks/tool_latency.py end to end on the toy model: real MCP calls, cold and warm, honest FLOP counts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tool_latency_on_the_toy_model(tmp_path):
    out = tmp_path / "latency.json"
    env = {**os.environ, "MCP_INTERP_STORE": str(tmp_path / "unused"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tool_latency.py"), "--model", "toy/tiny-random", "--task",
         "induction", "--n", "8", "--tools", "run_baseline,attribute", "--device", "cpu", "--json", str(out),
         "--markdown"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    meta, rows = data["meta"], {r["case"]: r for r in data["rows"]}
    assert meta["device"] == "cpu" and meta["peak_gflops"] > 0 and meta["torch"]
    # the counter counts exactly the analytic FLOPs of a forward (matmuls, attention, unembedding)
    over = meta["counter_overhead"]
    assert over["flops"] == over["analytic_flops"] > 0
    assert set(rows) == {"run_baseline", "attribute"}
    for r in rows.values():
        for phase in ("cold", "warm"):
            assert r[phase]["seconds"] > 0 and r[phase]["flops"] > 0, r
    # a baseline runs the same forwards cold and warm; attribution's atp runs backward passes on top
    assert rows["run_baseline"]["cold"]["flops"] == rows["run_baseline"]["warm"]["flops"]
    assert rows["attribute"]["cold"]["flops"] > rows["run_baseline"]["cold"]["flops"]
    assert "| run_baseline |" in proc.stdout and meta["device_name"] in proc.stdout  # the README table names the CPU


@pytest.mark.slow
def test_tool_latency_on_a_user_task(tmp_path):
    """--task-spec: the task is defined in every fresh store; off IOI the scrubbing hypothesis is the untimed atp
    call's top six heads, carrying the variable the task's counterfactual changes."""
    from mcp_interp.tasks.builtin import BUILTIN_TASKS

    spec = {**BUILTIN_TASKS["induction"].model_dump(mode="json"), "name": "induction-user"}
    (tmp_path / "task.json").write_text(json.dumps(spec))
    out = tmp_path / "latency.json"
    env = {**os.environ, "MCP_INTERP_STORE": str(tmp_path / "unused"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tool_latency.py"), "--model", "toy/tiny-random", "--task-spec",
         str(tmp_path / "task.json"), "--n", "8", "--tools", "scrub_hypothesis", "--device", "cpu",
         "--flops", "off", "--json", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["task"] == "induction-user" and data["meta"]["variable"] == "x6"
    (row,) = data["rows"]
    assert row["case"] == "scrub_hypothesis" and row["cold"]["seconds"] > 0, row
    assert row["args"]["task"] == "induction-user"
