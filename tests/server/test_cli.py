"""The command line: doctor, the HTTP bind guard, and the demo end to end on SmolLM2."""

import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "mcp_interp.server.cli"]


def test_doctor_reports_versions_and_store(tmp_path):
    out = subprocess.run([*CLI, "--store", str(tmp_path / "s"), "doctor"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for word in ("torch", "transformer-lens", "mcp", "bundled model", "store", "SmolLM2-135M-Instruct.Q4_1.gguf"):
        assert word in out.stdout


def test_http_refuses_public_bind_without_token(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "MCP_INTERP_TOKEN"}
    out = subprocess.run([*CLI, "--store", str(tmp_path / "s"), "serve", "--http", "--host", "0.0.0.0", "--port", "0"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "MCP_INTERP_TOKEN" in out.stderr


@pytest.mark.slow
def test_demo_writes_a_report_with_plots(tmp_path):
    out = subprocess.run([*CLI, "--store", str(tmp_path / "s"), "demo", "--n", "8"], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = Path(out.stdout.strip().splitlines()[-1])
    text = report.read_text()
    assert "the model solves this task" in text and "## 2. Locate" in text
    for png in ("baseline_hist.png", "locate_resid.png", "locate_heads.png"):
        assert (report.parent / png).stat().st_size > 1000
