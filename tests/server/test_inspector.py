"""A third-party client: the official MCP Inspector's CLI mode against `mcp-interp serve`, over stdio and over HTTP.

`scripts/install.sh --test` (which CI runs) installs the Inspector under .tools/inspector with npm. Without node on the
machine the tests skip; with node but without the Inspector they fail, naming the install command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mcp_helpers import HttpServer

ROOT = Path(__file__).resolve().parents[2]
INSPECTOR = Path(os.environ.get("MCP_INTERP_INSPECTOR", ROOT / ".tools/inspector/node_modules/.bin/mcp-inspector"))

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def inspector(target: list[str], *args: str, timeout: float = 240) -> dict:
    """Run one Inspector CLI request; return its JSON answer."""
    assert INSPECTOR.exists(), f"MCP Inspector not found at {INSPECTOR}: run `bash scripts/install.sh --test`"
    env = {**os.environ, "MCP_INSPECTOR_SECRET_STORE": "memory"}
    proc = subprocess.run([str(INSPECTOR), "--cli", *target, "--connect-timeout", "120000", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, (f"inspector {args} exited {proc.returncode}: "
                                  f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def stdio_target(tmp_path: Path, store_dir) -> list[str]:
    """A session config naming our stdio server, as a user would write one for any MCP client."""
    config = tmp_path / "inspector.json"
    config.write_text(json.dumps({"mcpServers": {"mcp-interp": {
        "command": sys.executable, "args": ["-m", "mcp_interp.server.cli", "--store", str(store_dir), "serve"],
        "env": {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME", "MCP_INTERP_CACHE")},
        # a busy 2-core CI machine can take a minute to import torch before it answers initialize
        "connectionTimeout": 180000, "requestTimeout": 180000}}}))
    return ["--config", str(config), "--server", "mcp-interp"]


def exercise(target: list[str]) -> None:
    """List the tools, run a baseline on a toy model and read a resource of the run."""
    names = {t["name"] for t in inspector(target, "--method", "tools/list")["tools"]}
    assert {"define_task", "run_baseline", "locate", "get_job"} <= names
    out = inspector(target, "--method", "tools/call", "--tool-name", "run_baseline",
                    "--tool-arg", "model=toy/tiny-random", "task=induction", "n=8")
    assert not out.get("isError"), out
    res = out["structuredContent"]
    assert res["status"] == "complete", res
    run_id = res["result"]["run_id"]
    assert res["result"]["n"] == 8 and res["result"]["model"] == "toy/tiny-random"
    read = inspector(target, "--method", "resources/read", "--uri", f"artifact://{run_id}/result.json")
    stored = json.loads(read["contents"][0]["text"])
    assert stored["run_id"] == run_id and stored["n"] == 8


def test_inspector_over_stdio(tmp_path, store_dir):
    exercise(stdio_target(tmp_path, store_dir))


def test_inspector_over_http(store_dir):
    with HttpServer(store_dir) as server:
        exercise([server.url, "--transport", "http"])
