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
    # `serve --store DIR`: the global option after the subcommand (argparse refused it once)
    out = subprocess.run([*CLI, "serve", "--store", str(tmp_path / "s"), "--http", "--host", "0.0.0.0", "--port", "0"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "MCP_INTERP_TOKEN" in out.stderr


@pytest.mark.slow
def test_demo_writes_a_report_with_plots(tmp_path):
    out = subprocess.run([*CLI, "--store", str(tmp_path / "s"), "demo", "--n", "8"], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = Path(out.stdout.strip().splitlines()[-1])
    text = report.read_text()
    assert "the model solves this task" in text and "## Locate" in text and "## Features" in text
    assert "## Comparison" in text and "## Transcoders trained" in text and "## Trace" in text and "## Sweep" in text
    assert text.count("## Causal scrubbing") == 3 and "## Provenance" in text
    figures = sorted(report.parent.glob("fig-*.png"))
    assert len(figures) >= 8 and all(f.stat().st_size > 1000 for f in figures)
    assert text.count("](fig-") == len(figures)
    page = (report.parent / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(figures) and "<img src='http" not in page


def test_allowed_hosts_follow_the_bind_address():
    import socket

    from mcp_interp.server.cli import allowed_hosts

    wild = allowed_hosts("0.0.0.0", 8765)
    assert f"{socket.gethostname()}:8765" in wild and "127.0.0.1:8765" in wild
    assert "10.1.2.3:8765" in allowed_hosts("10.1.2.3", 8765) and f"{socket.gethostname()}:8765" not in \
        allowed_hosts("10.1.2.3", 8765)
    assert {"box.lan:8765", "box.lan:9000", "[fe80::1]:8765"} <= set(
        allowed_hosts("127.0.0.1", 8765, ["box.lan", "box.lan:9000", "fe80::1"]))


def test_http_off_loopback_accepts_its_host_names_with_the_token(tmp_path):
    """Bound beyond 127.0.0.1 with a token, a client that names the server as it knows it (an --allowed-host here;
    the machine's names when bound to 0.0.0.0) gets through with the token, and only with it."""
    import os
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MCP_INTERP_TOKEN": "s3cret"}
    proc = subprocess.Popen([*CLI, "--store", str(tmp_path / "s"), "serve", "--http", "--host", "127.0.0.2", "--port",
                             str(port), "--allowed-host", "box.example"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}

    def post(host: str, token: str | None) -> int:
        headers = {"Host": host, "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.post(f"http://127.0.0.2:{port}/mcp", json=init, headers=headers, timeout=30).status_code

    try:
        deadline = time.time() + 90
        while True:
            try:
                with socket.create_connection(("127.0.0.2", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        assert post(f"box.example:{port}", "s3cret") == 200
        assert post(f"127.0.0.2:{port}", "s3cret") == 200
        assert post(f"box.example:{port}", None) == 401
        assert post(f"box.example:{port}", "wrong") == 401
        assert post(f"evil.example:{port}", "s3cret") == 421
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("argv", [
    ["--store", "S", "-v", "serve"], ["serve", "--store", "S", "-v"], ["-v", "serve", "--http", "--store", "S"],
    ["--store", "S", "-v", "runs", "show", "R"], ["runs", "show", "R", "--store", "S", "-v"],
    ["runs", "--store", "S", "-v", "list"], ["doctor", "--store", "S", "-v"], ["-v", "demo", "--store", "S"],
    ["install", "claude", "--store", "S", "-v"],
])
def test_global_options_before_or_after_the_subcommand(argv):
    from mcp_interp.server.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.store == "S" and args.verbose is True


def test_global_defaults_and_runs_default_action():
    from mcp_interp.server.cli import build_parser

    args = build_parser().parse_args(["runs"])
    assert args.store is None and args.verbose is False and args.runs_action in (None, "list") and args.limit == 20
    # a value before the subcommand is not overwritten by the subcommand's own (absent) copy of the option
    assert build_parser().parse_args(["--store", "A", "runs", "list"]).store == "A"


def test_environment_variables_are_documented():
    from mcp_interp.server.cli import ENVIRONMENT, build_parser

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    text = build_parser().format_help()
    for names, _ in ENVIRONMENT:
        for var in names.split(", "):
            assert var in readme and var in text, var
    assert "exit status" in text


def test_usage_errors_exit_2_and_failures_exit_1(tmp_path):
    assert subprocess.run([*CLI, "no-such-command"], capture_output=True, timeout=120).returncode == 2
    out = subprocess.run([*CLI, "runs", "show", "nope", "--store", str(tmp_path / "s")], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1 and "run_id: no run 'nope'" in out.stderr and "Traceback" not in out.stderr


def test_runs_list_and_show_read_the_store(tmp_path):
    import json

    from mcp_interp import Lab

    with Lab(store=tmp_path / "s") as lab:
        run = lab.run_baseline(model="toy/tiny-random", task="induction", n=8).result
    out = subprocess.run([*CLI, "runs", "--store", str(tmp_path / "s")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["RUN", "TOOL", "TASK", "MODEL", "STATUS", "CREATED"]
    assert lines[1].split()[:5] == [run.run_id, "run_baseline", "induction", "toy/tiny-random", "complete"]
    assert lines[-1] == f"1 run(s) in {tmp_path / 's'}"
    out = subprocess.run([*CLI, "--store", str(tmp_path / "s"), "runs", "show", run.run_id], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["run"]["run_id"] == run.run_id and shown["result"]["verdict"] == run.verdict
    assert "metric_hist.png" in shown["files"]
