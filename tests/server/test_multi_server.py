"""Several stdio servers on one store (Claude Code starts one per session): a new server never interrupts a live
server's job, identical requests join one job across processes, and a server killed with -9 leaves no debris once
the next one starts. Each test is bounded in time and stops its processes itself."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp_helpers import call

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
TOY = "toy/tiny-random"
ARGS = {"model": TOY, "task": "induction", "n": 8}



def slow_server(store_dir, pid_file, seconds: float = 6.0, gate: Path | None = None,
                where: str = "compute") -> StdioServerParameters:
    env = {**os.environ, "SLOW_SECONDS": str(seconds), "PYTHONPATH": str(ROOT), "SLOW_GATE": str(gate or ""),
           "SLOW_WHERE": where}
    return StdioServerParameters(command=sys.executable, cwd=str(ROOT), env=env,
                                 args=["-m", "tests.server.slow_server", str(pid_file), "--store", str(store_dir),
                                       "serve"])


async def test_two_servers_share_jobs_and_never_interrupt_each_other(store_dir, tmp_path):
    gate = tmp_path / "gate"
    with anyio.fail_after(150):
        async with Client(slow_server(store_dir, tmp_path / "a.pid", seconds=90, gate=gate)) as a:
            out = await call(a, "run_baseline", {**ARGS, "wait_seconds": 0.5})
            assert out["status"] == "running"
            job_id = out["job"]["job_id"]
            async with Client(slow_server(store_dir, tmp_path / "b.pid", seconds=90, gate=gate)) as b:
                # B started while A's job runs: B sees it running, not interrupted
                seen = await call(b, "get_job", {"job_id": job_id, "wait_seconds": 0})
                assert seen["status"] in ("running", "queued"), seen
                # the identical request sent to B joins A's job instead of computing it again
                pending = await call(b, "run_baseline", {**ARGS, "wait_seconds": 0.5})
                assert pending["status"] == "running" and pending["job"]["job_id"] == job_id, pending
                gate.touch()  # let A's job finish
                joined = await call(b, "run_baseline", {**ARGS, "wait_seconds": 60})
                assert joined["status"] == "complete", joined
                mine = await call(a, "get_job", {"job_id": job_id, "wait_seconds": 30})
                assert mine["status"] == "complete"
                assert joined["result"]["run_id"] == mine["result"]["run_id"]
                runs = (await call(b, "list_runs", {"tool": "run_baseline"}))["runs"]
                assert len(runs) == 1, runs
                # a job of the other server can be cancelled from here: its owner picks the request up
                gate.unlink()
                out = await call(b, "run_baseline", {**ARGS, "n": 6, "wait_seconds": 0.3})
                other = out["job"]["job_id"]
                got = await call(a, "cancel_job", {"job_id": other})
                assert "cancel" in got["message"]
                final = await call(b, "get_job", {"job_id": other, "wait_seconds": 20})
                assert final["status"] == "cancelled", final


async def test_kill_9_leaves_no_debris_and_only_its_jobs_are_interrupted(store_dir, tmp_path):
    pid_file = tmp_path / "victim.pid"
    with anyio.fail_after(150):
        gate = tmp_path / "gate"
        async with Client(slow_server(store_dir, tmp_path / "live.pid", seconds=120, gate=gate)) as live:
            kept = (await call(live, "run_baseline", {**ARGS, "n": 10, "wait_seconds": 0.3}))["job"]["job_id"]
            victim_jobs = []
            for i in range(2):  # kill -9 mid-run, twice; each start sweeps what the killed one left
                before = set((store_dir / ".staging").glob("*"))
                killed = False
                try:
                    async with Client(slow_server(store_dir, pid_file, seconds=60, where="write")) as victim:
                        out = await call(victim, "run_baseline", {**ARGS, "n": 4 + i, "wait_seconds": 1.5})
                        assert out["status"] == "running"
                        victim_jobs.append(out["job"]["job_id"])
                        with anyio.fail_after(60):  # until its run is being written (its staging dir exists)
                            while not (set((store_dir / ".staging").glob("*")) - before):
                                await anyio.sleep(0.1)
                        os.kill(int(pid_file.read_text()), signal.SIGKILL)
                        killed = True
                        await anyio.sleep(0.5)
                except Exception:  # the client notices its server is gone; anything before the kill is a failure
                    if not killed:
                        raise
            staging = store_dir / ".staging"
            assert len(list(staging.iterdir())) == 1  # the debris of the last killed server
            async with Client(slow_server(store_dir, tmp_path / "next.pid")) as nxt:
                for jid in victim_jobs:
                    got = await call(nxt, "get_job", {"job_id": jid, "wait_seconds": 0})
                    assert got["status"] == "interrupted", got
                assert (await call(nxt, "get_job", {"job_id": kept, "wait_seconds": 0}))["status"] in ("running",
                                                                                                      "queued")
                left = [d.name for d in staging.iterdir()]
                statuses = {r["run_id"]: r["status"] for r in (await call(nxt, "list_runs", {"limit": 50}))["runs"]}
                assert all(statuses.get(d) == "running" for d in left), (left, statuses)  # only the live one's
                assert sum(s == "interrupted" for s in statuses.values()) == 2, statuses
            gate.touch()
            done = await call(live, "get_job", {"job_id": kept, "wait_seconds": 30})
            assert done["status"] == "complete"
            assert list(staging.iterdir()) == []
