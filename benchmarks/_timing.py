"""Timing our code against a baseline so that neither side is favoured: the one helper every benchmark uses.

`alternate` runs each side the same number of times, in the given order on even repeats and reversed on odd ones
(ours, base / base, ours / ours, base ...), so neither side always pays the cold start (first imports, allocator,
kernel choice) or always runs right after the other. `report` prints, per baseline, the median of the per-repeat
ratios baseline / ours with their min-max spread, in wall and process CPU time (on a shared machine the CPU time is
the steadier measure of work), and the max |difference| of the two sides' results over the repeats. Quote the
median and the spread; a best-of-n or a single first run says more about the machine than about the code.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.machine import sync

REPEATS_HELP = ("runs of every side, alternating which goes first (ours, base / base, ours / ...); the median "
                "ratio and its min-max spread are printed")


def add_repeats(ap: argparse.ArgumentParser, default: int = 2) -> None:
    """The --repeats option every comparing benchmark takes."""
    ap.add_argument("--repeats", type=int, default=default, help=REPEATS_HELP)


@dataclass
class Run:
    wall: float
    cpu: float
    result: Any


@dataclass
class Timings:
    """Every run of every side, in the order each side's runs happened."""

    runs: dict[str, list[Run]] = field(default_factory=dict)

    def seconds(self, side: str, clock: str = "wall") -> list[float]:
        return [getattr(r, clock) for r in self.runs[side]]

    def median(self, side: str, clock: str = "wall") -> float:
        return statistics.median(self.seconds(side, clock))

    def ratios(self, base: str, ours: str, clock: str = "wall") -> list[float]:
        """base / ours of each repeat (the two runs of a repeat are adjacent in time)."""
        return [b / max(o, 1e-12) for b, o in zip(self.seconds(base, clock), self.seconds(ours, clock))]

    def ratio(self, base: str, ours: str, clock: str = "wall") -> tuple[float, float, float]:
        """(median, min, max) of the per-repeat ratios base / ours."""
        r = self.ratios(base, ours, clock)
        return statistics.median(r), min(r), max(r)

    def first(self, side: str) -> Any:
        """The result of the side's first run."""
        return self.runs[side][0].result


def timed(fn: Callable[[], Any], device: Any = None) -> Run:
    """One call of fn: wall and process CPU seconds (queued GPU work on `device` included) and its result."""
    sync(device)
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    sync(device)
    return Run(time.perf_counter() - w0, time.process_time() - c0, out)


def alternate(sides: dict[str, Callable[[], Any]], repeats: int = 2, device: Any = None,
              log: Callable[[str], None] | None = print) -> Timings:
    """Run every side `repeats` times: repeat r in the order of `sides` when r is even, reversed when odd."""
    t = Timings({name: [] for name in sides})
    names = list(sides)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            run = timed(sides[name], device)
            t.runs[name].append(run)
            if log:
                log(f"  repeat {r + 1}/{repeats} {name}: {run.wall:.2f} s wall, {run.cpu:.2f} s CPU")
    return t


def max_abs_diff(a: Any, b: Any) -> float:
    """max |a - b| of two tensors / arrays / numbers."""
    return float((torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs().max())


def result_diff(t: Timings, ours: str, base: str, diff: Callable[[Any, Any], float] = max_abs_diff) -> float:
    """The largest diff(ours, base) over the repeats' result pairs."""
    return max(diff(o.result, b.result) for o, b in zip(t.runs[ours], t.runs[base]))


def ratio_text(t: Timings, base: str, ours: str, clock: str = "wall") -> str:
    """'12.3x (11.0-13.1)': the median ratio base / ours and its min-max over the repeats."""
    m, lo, hi = t.ratio(base, ours, clock)
    return f"{m:.1f}x ({lo:.1f}-{hi:.1f})"


def report(t: Timings, ours: str, diff: Callable[[Any, Any], float] | None = max_abs_diff, what: str = "diff",
           cpu: bool = True, log: Callable[[str], None] = print) -> dict[str, dict]:
    """Print each side's median seconds and, per other side, the median ratio other / ours with its spread and the
    max |difference| of the results (`what` names it; diff None: not compared). Returns {side: numbers} for JSON /
    tables."""
    n = len(t.runs[ours])
    out: dict[str, dict] = {}
    for name in t.runs:
        row = {"wall_s": t.seconds(name), "cpu_s": t.seconds(name, "cpu"), "median_wall_s": t.median(name),
               "median_cpu_s": t.median(name, "cpu")}
        line = f"{name:24s} median {row['median_wall_s']:8.2f} s wall"
        if cpu:
            line += f", {row['median_cpu_s']:8.2f} s CPU"
        if name != ours:
            m, lo, hi = t.ratio(name, ours)
            row.update(ratio=m, ratio_min=lo, ratio_max=hi)
            line += f"   speed-up of {ours}: {ratio_text(t, name, ours)} wall"
            if cpu:
                m, lo, hi = t.ratio(name, ours, "cpu")
                row.update(cpu_ratio=m, cpu_ratio_min=lo, cpu_ratio_max=hi)
                line += f", {ratio_text(t, name, ours, 'cpu')} CPU"
            if diff is not None:
                row["max_abs_diff"] = result_diff(t, ours, name, diff)
                line += f"   max |{what}| {row['max_abs_diff']:.2e}"
        out[name] = row
        log(line)
    log(f"  (median over {n} alternating repeat{'s' if n != 1 else ''}; ratio spread min-max)")
    return out
