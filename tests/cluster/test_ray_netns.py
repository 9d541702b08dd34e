"""The Ray tests (`ray_suite.py`), run on a real two-node Ray cluster inside a private network namespace.

Ray binds to the machine's interface address and ignores a request for 127.0.0.1; inside a network namespace of its
own (`unshare -n`, loopback up) every node is 127.0.0.1 and no test traffic leaves the machine. So this test starts a
pytest of `ray_suite.py` there and passes only if every test in it passes (their names and results are printed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).with_name("ray_suite.py")


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
def test_ray_suite_in_private_network_namespace():
    pytest.importorskip("ray")
    if not _can_unshare():
        pytest.skip("needs `unshare -n` (root or CAP_SYS_ADMIN) to keep the Ray cluster on a private loopback")
    env = {**os.environ, "MCP_INTERP_NETNS": "1"}
    cmd = (f"ip link set lo up && exec {sys.executable} -m pytest {SUITE} -q -ra -p no:cacheprovider "
           f"--rootdir {SUITE.parents[2]}")
    proc = subprocess.run(["unshare", "-n", "bash", "-c", cmd], env=env, capture_output=True, text=True,
                          cwd=SUITE.parents[2], timeout=900)
    out = proc.stdout + proc.stderr
    print(out[-6000:])
    assert proc.returncode == 0, f"Ray suite failed (exit {proc.returncode}):\n{out[-6000:]}"
    assert " passed" in out and " failed" not in out
