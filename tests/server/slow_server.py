"""`mcp-interp serve` (stdio) whose run_baseline computes slowly, for multi-process tests: it runs until the file
SLOW_GATE exists (when set) or SLOW_SECONDS have passed.

Usage: python -m tests.server.slow_server <pid file> <cli args...>. Writes its pid first, so a test can kill -9 it.
"""

import os
import sys
import time

from mcp_interp.server.cli import main
from mcp_interp.tools import baseline

SLOW_SECONDS = float(os.environ.get("SLOW_SECONDS", "6"))
_real = baseline.compute_baseline


GATE = os.environ.get("SLOW_GATE")


def _slow(model, ds, progress=None, **kw):
    t0 = time.monotonic()
    while time.monotonic() - t0 < SLOW_SECONDS:  # a slow, cancellable stand-in for the forward passes
        if GATE and os.path.exists(GATE):
            break
        time.sleep(0.05)
        if progress:
            progress((time.monotonic() - t0) / SLOW_SECONDS, "slow")
    return _real(model, ds)


def _slow_plot(*args, **kw):  # SLOW_WHERE=write: slow after the run was opened (its staging dir exists)
    _slow(None, None)
    return _real_histogram(*args, **kw)


_real_histogram = baseline.plots.histogram

if __name__ == "__main__":
    with open(sys.argv[1], "w") as f:
        f.write(str(os.getpid()))
    if os.environ.get("SLOW_WHERE") == "write":
        _real = lambda model, ds: None  # noqa: E731 (never called)
        baseline.plots.histogram = _slow_plot
    else:
        baseline.compute_baseline = _slow
    sys.exit(main(sys.argv[2:]))
