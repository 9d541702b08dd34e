"""scripts/install.sh refuses a bad --torch choice, and `--torch keep` without a torch, before touching anything."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install.sh"


def run(*args, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_bad_torch_mode_is_refused():
    r = run("--torch", "rocm")
    assert r.returncode == 2 and "one of auto, keep, cuda, cpu" in r.stderr


def test_keep_without_a_torch_is_refused():
    r = run("--torch", "keep", env={"PYTHON": "/bin/false"})
    assert r.returncode == 2 and "no torch to keep" in r.stderr
