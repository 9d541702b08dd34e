"""Seconds per heavy tool's default call, through a real MCP client, on SmolLM2 IOI.

    python benchmarks/tool_latency.py [--model smollm2-135m] [--task ioi | --task-spec FILE] [--n 16]
                                      [--variable V] [--tools a,b,...] [--device auto|cpu|cuda] [--quick]
                                      [--budget S] [--json OUT] [--markdown]

Each case is one tool call an agent would make (`--list` shows them), sent through an in-process MCP Client
to our server, as tests/mcp_helpers.py does, and timed until its result is in hand (the first answer within
wait_seconds = 50, else get_job long-polls):
  cold: a fresh server, store and in-memory caches around the model pool, with the model already loaded
        (the tools' prerequisites, e.g. train_das before eval_das, are run untimed first in that store);
  warm: the same request again on that server with force=true (eval_das, which has no `force`: seed+1), so
        the run cache misses but every in-memory cache (activations, ...) is kept.
FLOPs: the matmul FLOPs actually run in the tool's job, counted by torch.utils.flop_counter.FlopCounterMode
around the job function in its worker thread (matmuls, bmm/baddbmm, convolutions and SDPA; element-wise work
is not counted; on one forward it equals the analytic count, printed at the start). The counter costs Python
time per op (the start line shows how much on one forward, 1.3x on SmolLM2 on a CPU), so by default
(`--flops separate`) the timed calls run without it and are counted in a second cold + warm pass on another fresh
server; `--flops inline` counts in the timed calls (half the run time, seconds inflated by the counter), `off`
not at all.
GFLOP/s = counted FLOPs / wall seconds of the call, beside the device's float32 matmul peak measured in the same
run (timed square float32 matmuls on the device the model pool uses, at the start and the end; the higher is
shown). Target: every cold call < 50 s.

Other tasks: `--task NAME` (a built-in) or `--task-spec FILE` (a TaskSpec JSON, sent to define_task, untimed, in
every fresh store). Off IOI the cases that need a task variable (train_das, find_features, the scrubbing
hypothesis's interpretation) use `--variable`, by default the first variable the task's first counterfactual
changes, and the six-head scrubbing hypothesis is the untimed atp `attribute` call's six heads with the largest
|score| (on IOI: SmolLM2's name movers, as the demo).

--quick keeps the SAE cases tiny and find_features' permutations few; --budget S stops (cancelling the running
job) once S seconds have passed, so the whole run fits a fixed slot. Nothing here reaches the network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anyio  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks._timing import alternate  # noqa: E402
from benchmarks.machine import device_name, matmul_peak  # noqa: E402

TARGET_S = 50.0
# SmolLM2's name movers at END (from locate and attribute; the demo's): the IOI scrubbing hypothesis.
MOVERS = [(23, 3), (20, 0), (29, 1), (23, 0), (24, 4), (29, 0)]


def movers(c: dict) -> bool:
    """Whether the scrubbing hypothesis is SmolLM2's IOI name movers (else the atp call's top six heads)."""
    return c["task"] == "ioi" and c["model"] == "smollm2-135m"


def six_heads(c: dict) -> dict:
    """A six-head hypothesis at END whose heads carry the task variable: IOI's name movers, else the top six heads
    of the prerequisite atp `attribute` call."""
    if movers(c):
        heads, var = MOVERS, "IO"
    else:
        top = [u["name"] for u in c["attribute"]["top"]][:6]
        heads, var = [(int(n[1:n.index("H")]), int(n[n.index("H") + 1:])) for n in top], c["variable"]
    return {"name": "top-heads", "interp": [{"name": var, "value": var}],
            "output": {"parents": [f"L{l}H{h}" for l, h in heads]},
            "nodes": [{"name": f"L{l}H{h}", "kind": "head", "layer": l, "head": h, "position": "END",
                       "interp": var} for l, h in heads]}


def default_variable(spec: dict) -> str:
    """The first variable the task's first counterfactual changes (else its first variable)."""
    cf = (spec.get("counterfactuals") or [{}])[0]
    changed = list(cf.get("variables") or []) + list(cf.get("assign") or {})
    return changed[0] if changed else next(iter(spec["variables"]))


@dataclass
class Case:
    """One timed call. `args(ctx)` builds its arguments; ctx holds model, task, n, quick, variable and the results
    of the prerequisite cases (by name; `needs(ctx)` names them). `note` says where the call departs from the
    tool's defaults."""

    name: str
    tool: str
    args: Callable[[dict], dict]
    needs: Callable[[dict], list[str]] = lambda c: []
    note: str = ""


def _base(c: dict) -> dict:
    return {"model": c["model"], "task": c["task"], "n": c["n"]}


def _sae_args(c: dict) -> dict:
    tokens, epochs = (1024, 2) if c["quick"] else (4096, 4)
    return {"model": c["model"], "site": "resid_pre", "layer": c["layer"], "corpus": "shakespeare",
            "tokens": tokens, "context": 64, "skip_first": 1, "expansion": 2, "epochs": epochs, "splice_windows": 4}


CASES = [
    Case("run_baseline", "run_baseline", _base),
    Case("locate", "locate", _base, note="resid_pre, positions auto"),
    Case("attribute", "attribute", _base, note="atp on heads + faithfulness curve"),
    Case("attribute_exact", "attribute", lambda c: {**_base(c), "method": "exact", "level": "heads"},
         note="exact patching, every head"),
    Case("attribute_atp_exact", "attribute", lambda c: {**_base(c), "compare_exact": True},
         note="atp + compare_exact"),
    Case("attribute_atp_star", "attribute", lambda c: {**_base(c), "method": "atp_star"},
         note="AtP* (QK fix, GradDrop) on heads"),
    Case("attribute_edges", "attribute", lambda c: {**_base(c), "method": "eap_ig", "level": "edges"},
         note="eap_ig edges + faithfulness curve"),
    Case("scrub_hypothesis", "scrub_hypothesis", lambda c: {**_base(c), "hypothesis": six_heads(c)},
         needs=lambda c: [] if movers(c) else ["attribute"],
         note="six heads at END (SmolLM2 IOI: the name movers; else atp's top six); seeds 3, contributions"),
    Case("train_das", "train_das", lambda c: {"model": c["model"], "task": c["task"],
                                               "variable": "IO" if c["task"] == "ioi" else c["variable"],
                                               "layer": c["layer"]},
         note="the variable at resid_pre END; tool defaults n_train 128 / n_test 64 (not --n)"),
    Case("eval_das", "eval_das", lambda c: {"run_id": c["train_das"]["run_id"]}, needs=lambda c: ["train_das"],
         note="the train_das run's data (n = 192)"),
    Case("train_sae", "train_sae", _sae_args, note="SMALL, not the defaults (30k tokens x 16 epochs)"),
    Case("load_sae", "load_sae", lambda c: {"model": c["model"], "path": c["train_sae"]["sae_path"],
                                            "task": c["task"], "n": c["n"]}, needs=lambda c: ["train_sae"]),
    Case("find_features", "find_features",
         lambda c: {**_base(c), "variable": "order" if c["task"] == "ioi" else c["variable"],
                    "sae": c["train_sae"]["run_id"], **({"n_perm": 200} if c["quick"] else {})},
         needs=lambda c: ["train_sae"], note="the train_sae SAE; n_perm 1000 (200 with --quick)"),
    Case("compare_features", "compare_features",
         lambda c: {"a": {"model": c["model"], "layer": max(0, c["layer"] - 2)},
                    "b": {"model": c["model"], "layer": c["layer"]}, "task": c["task"]},
         note="resid_post at --layer - 2 vs --layer on the task's prompts; tool defaults (n 128, 5 causal tests)"),
    Case("attribute_dla", "attribute", lambda c: {**_base(c), "method": "dla"},
         note="direct logit attribution of every head + faithfulness curve"),
    Case("logit_lens", "logit_lens", _base, note="every layer at the task's positions and END"),
    Case("attention", "attention", lambda c: {**_base(c), **({"prefer": ["IO", "S1"]} if c["task"] == "ioi" else {})},
         note="every head; IOI: prefer IO over S1"),
    Case("probe", "probe", lambda c: {"model": c["model"], "task": c["task"],
                                      "variable": "order" if c["task"] == "ioi" else c["variable"]},
         note="every layer; tool default n 256 (not --n)"),
    Case("steer", "steer", lambda c: {**_base(c), "intervention": {
        "kind": "feature", "source": "probe", "probe_run": c["probe"]["run_id"], "index": 0}},
         needs=lambda c: ["probe"], note="the probe run's best-layer direction, 5 alphas, 4 prompts x 16 tokens"),
]
BY_NAME = {c.name: c for c in CASES}
NO_FORCE = {"eval_das"}  # tools without `force`: the warm call changes the seed instead


# ---------------------------------------------------------------- the machine

def counter_overhead(model, device: str, n: int, seq: int = 16) -> dict:
    """Seconds of one forward of n x seq tokens without and with FlopCounterMode (median of 3 each, alternating),
    and the FLOPs it counts: what counting costs per forward, and a check that it counts what a forward runs."""
    toks = torch.randint(0, model.cfg.d_vocab, (n, seq), device=device)

    def forward(counted: bool) -> int:
        fc = flop_counter()
        with torch.inference_mode(), (fc if counted else contextlib.nullcontext()):
            model(toks)
        return fc.get_total_flops() if counted else 0

    forward(False)  # warm-up
    t = alternate({"plain": lambda: forward(False), "counted": lambda: forward(True)}, 3, device, log=None)
    from mcp_interp.methods.patching import forward_flops
    return {"tokens": n * seq, "plain_s": round(t.median("plain"), 4), "counted_s": round(t.median("counted"), 4),
            "flops": t.first("counted"), "analytic_flops": forward_flops(model.cfg, n, seq, model.cfg.d_vocab)}


# ---------------------------------------------------------------- the server, instrumented

class _NoModules:
    """Stands in for FlopCounterMode's module tracker, which hooks every module's inputs for backward and then
    breaks tools that take autograd.grad of a hooked leaf (EAP-IG: 'A leaf node was passed to
    _will_engine_execute_node'); the totals need no per-module split."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def flop_counter() -> FlopCounterMode:
    fc = FlopCounterMode(display=False)
    fc.mod_tracker = _NoModules()
    return fc


class FlopLog:
    """FLOPs and seconds of every job the server ran, counted in the job's worker thread."""

    def __init__(self, count: bool):
        self.count = count
        self.jobs: list[tuple[str, int, float]] = []
        self._lock = threading.Lock()

    def wrap(self, jobs) -> None:
        submit = jobs.submit

        def counted_submit(kind, fn, **kw):
            def run(ctx):
                t0 = time.perf_counter()
                if not self.count:
                    try:
                        return fn(ctx)
                    finally:
                        self._add(kind, 0, t0)
                fc = flop_counter()
                try:
                    with fc:
                        return fn(ctx)
                finally:
                    self._add(kind, fc.get_total_flops(), t0)
            return submit(kind, run, **kw)

        jobs.submit = counted_submit

    def _add(self, kind: str, flops: int, t0: float) -> None:
        with self._lock:
            self.jobs.append((kind, flops, time.perf_counter() - t0))

    def since(self, mark: int) -> int:
        with self._lock:
            return sum(f for _, f, _ in self.jobs[mark:])

    def mark(self) -> int:
        with self._lock:
            return len(self.jobs)


def make_server(pool, log: FlopLog, root: Path, apps: list):
    from mcp_interp.artifacts import ArtifactStore
    from mcp_interp.runtime.context import AppContext
    from mcp_interp.runtime.jobs import JobManager
    from mcp_interp.runtime.task_registry import TaskRegistry
    from mcp_interp.server.app import build_server

    def make_app() -> AppContext:
        store = ArtifactStore(root)
        app = AppContext(store=store, pool=pool, jobs=JobManager(store), tasks=TaskRegistry(root))
        log.wrap(app.jobs)
        apps.append(app)
        return app

    return build_server(make_app=make_app)


@contextlib.contextmanager
def fresh_server(pool, log: FlopLog):
    """A server on a new temporary store; its job threads are joined before the store is deleted."""
    apps: list = []
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        try:
            yield make_server(pool, log, Path(tmp) / "store", apps)
        finally:
            for app in apps:
                app.jobs.shutdown(wait=True, timeout=60)


class OverBudget(Exception):
    pass


async def timed_call(client, tool: str, args: dict, deadline: float) -> tuple[dict, float, bool]:
    """(result, seconds, answered within the first wait) for one call, following its job to the end."""
    t0 = time.perf_counter()
    res = await client.call_tool(tool, args, read_timeout_seconds=None)
    if res.is_error:
        raise RuntimeError(f"{tool} failed: {res.content[0].text if res.content else res}")
    out = res.structured_content
    first = out.get("status") == "complete"
    if not first:
        job_id = out["job"]["job_id"]
        while out["status"] in ("running", "queued"):
            if time.perf_counter() > deadline:
                await client.call_tool("cancel_job", {"job_id": job_id})
                raise OverBudget(tool)
            out = (await client.call_tool("get_job", {"job_id": job_id, "wait_seconds": 10})).structured_content
        if out["status"] != "complete":
            raise RuntimeError(f"{tool}: job {out['status']}: {out.get('error')}")
    seconds = time.perf_counter() - t0
    return out["result"], seconds, first


async def define_user_task(client, ctx: dict) -> None:
    """A user task lives in the store: define it (untimed) in each fresh one."""
    if ctx.get("task_spec"):
        res = await client.call_tool("define_task", ctx["task_spec"])
        if res.is_error:
            raise RuntimeError(f"define_task failed: {res.content[0].text if res.content else res}")


# ---------------------------------------------------------------- one case, cold and warm

async def run_case(case: Case, ctx: dict, pool, count: bool, deadline: float) -> dict:
    """The case cold (a fresh server and store) then warm (force=true on the same server), timed; with `count`,
    under FlopCounterMode."""
    from mcp import Client

    row: dict[str, Any] = {"case": case.name, "tool": case.tool, "note": case.note}
    log = FlopLog(count=count)
    with fresh_server(pool, log) as server:
        async with Client(server) as client:
            local = dict(ctx)
            await define_user_task(client, ctx)
            for need in case.needs(local):  # prerequisites, untimed, in this fresh store
                local[need], _, _ = await timed_call(client, BY_NAME[need].tool, BY_NAME[need].args(local), deadline)
            args = case.args(local)
            row["args"] = {k: v for k, v in args.items() if k != "hypothesis"}
            for phase in ("cold", "warm"):
                call_args = dict(args)
                if phase == "warm":
                    call_args.update({"seed": 1} if case.tool in NO_FORCE else {"force": True})
                mark = log.mark()
                result, secs, first = await timed_call(client, case.tool, call_args, deadline)
                if result.get("cached"):
                    raise RuntimeError(f"{case.name} {phase}: served from the run cache; the timing would be void")
                flops = log.since(mark)
                row[phase] = {"seconds": round(secs, 2), "within_wait": first, "flops": flops,
                              "gflops_per_s": round(flops / secs / 1e9, 4) if flops else None}
                if phase == "cold":
                    row["summary"] = str(result.get("summary") or result.get("verdict") or "")[:160]
    return row


async def measure(case: Case, ctx: dict, pool, flops: str, deadline: float) -> dict:
    """One row. `flops` inline: counted in the timed calls; separate: the case is run twice, timed without the
    counter, then counted (cold and warm again, on another fresh server) with it; off: not counted."""
    row = await run_case(case, ctx, pool, flops == "inline", deadline)
    if flops == "separate":
        counted = await run_case(case, ctx, pool, True, deadline)
        for phase in ("cold", "warm"):
            f, secs = counted[phase]["flops"], row[phase]["seconds"]
            row[phase].update(flops=f, gflops_per_s=round(f / secs / 1e9, 4) if f else None,
                              counted_call_s=counted[phase]["seconds"])
    return row


# ---------------------------------------------------------------- output

def fmt_flops(f: int | None) -> str:
    if not f:
        return "—"
    return f"{f / 1e12:.2f} T" if f >= 1e12 else f"{f / 1e9:.1f} G" if f >= 1e8 else f"{f / 1e6:.1f} M"


def table(rows: list[dict], meta: dict, markdown: bool) -> str:
    head = ["case", "cold s", "warm s", f"< {TARGET_S:.0f} s cold", "cold FLOPs", "cold GFLOP/s",
            "warm FLOPs", "warm GFLOP/s", "note"]
    lines = []
    for r in rows:
        if "cold" not in r:
            lines.append([r["case"], r.get("status", "—"), "", "", "", "", "", "", r.get("note", "")])
            continue
        c, w = r["cold"], r.get("warm") or {}
        ok = "yes" if c["seconds"] < TARGET_S else "NO"
        lines.append([r["case"], f"{c['seconds']:.1f}", f"{w['seconds']:.1f}" if w else "—", ok,
                      fmt_flops(c["flops"]), f"{c['gflops_per_s']:.3g}" if c["gflops_per_s"] else "—",
                      fmt_flops(w.get("flops")), f"{w['gflops_per_s']:.3g}" if w.get("gflops_per_s") else "—",
                      r.get("note", "")])
    over = meta.get("counter_overhead") or {}
    slowdown = (f"; the counter slows one forward {over['counted_s'] / over['plain_s']:.2f}x"
                if meta.get("flops_method", "").startswith("FlopCounterMode in the timed") and over.get("plain_s")
                else "")
    load = f", load average {meta['load_average_start'][0]:.1f}" if meta.get("load_average_start") else ""
    title = (f"{meta['model']} {meta['task']} n={meta['n']} on {meta['device_name']} ({meta['device']}, "
             f"{meta['threads']} threads{load}), torch {meta['torch']}; "
             f"float32 matmul peak "
             f"{meta['peak_gflops']:.0f} GFLOP/s; FLOPs: {meta['flops_method']}{slowdown}")
    if markdown:
        out = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(x.replace("|", "/") for x in ln) + " |" for ln in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(ln[i]) for ln in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = lambda ln: "  ".join(x.ljust(w) for x, w in zip(ln, widths))  # noqa: E731
    return "\n".join([title, fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="ioi", help="a built-in task")
    ap.add_argument("--task-spec", default=None, metavar="FILE",
                    help="a TaskSpec JSON file, defined in every fresh store (its name replaces --task)")
    ap.add_argument("--variable", default=None,
                    help="task variable for train_das / find_features / scrubbing off IOI (default: the first one "
                         "the first counterfactual changes)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--layer", type=int, default=None,
                    help="layer for train_das / train_sae / compare_features (default 3/4 of the depth: SmolLM2 22)")
    ap.add_argument("--tools", default="all", help="comma-separated case names (--list), or 'all'")
    ap.add_argument("--skip", default="", help="comma-separated case names to leave out")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--flops", choices=["inline", "separate", "off"], default="separate",
                    help="count FLOPs in a second, untimed pass (default), in the timed calls (their seconds then "
                         "include the counter's overhead), or not at all")
    ap.add_argument("--quick", action="store_true", help="tiny SAE cases, 200 permutations")
    ap.add_argument("--budget", type=float, default=None, help="stop after this many seconds (the running job is "
                    "cancelled, the rest reported as skipped)")
    ap.add_argument("--json", dest="json_out", default=None, help="write the table and machine to this JSON file")
    ap.add_argument("--markdown", action="store_true", help="print a README-ready markdown table")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--from-json", nargs="+", default=None, metavar="FILE",
                    help="print the table of earlier --json runs (rows joined in order, machine of the first) and exit")
    opts = ap.parse_args()
    if opts.from_json:
        runs = [json.loads(Path(f).read_text()) for f in opts.from_json]
        rows = [r for run in runs for r in run["rows"]]
        print(table(rows, runs[0]["meta"], markdown=opts.markdown))
        return
    if opts.list:
        for c in CASES:
            print(f"{c.name:22s} {c.tool:18s} {c.note}")
        return
    names = [c.name for c in CASES] if opts.tools == "all" else [t.strip() for t in opts.tools.split(",") if t]
    skip = {t.strip() for t in opts.skip.split(",") if t.strip()}
    unknown = [t for t in [*names, *skip] if t not in BY_NAME]
    if unknown:
        ap.error(f"--tools/--skip: unknown case(s) {unknown}; use --list")
    names = [t for t in names if t not in skip]
    if opts.task_spec:
        task_spec = json.loads(Path(opts.task_spec).read_text())
        opts.task = task_spec["name"]
    else:
        from mcp_interp.tasks.builtin import BUILTIN_TASKS
        if opts.task not in BUILTIN_TASKS:
            ap.error(f"--task: {opts.task!r} is not built in ({', '.join(BUILTIN_TASKS)}); pass --task-spec FILE")
        task_spec = None
    variable = opts.variable or default_variable(task_spec or BUILTIN_TASKS[opts.task].model_dump())
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if opts.device == "auto" else opts.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device here")

    from mcp_interp.models import ModelPool
    start = time.perf_counter()
    deadline = start + opts.budget if opts.budget else float("inf")
    pool = ModelPool(device=device)
    t0 = time.perf_counter()
    pool.get(opts.model)  # loaded once; every fresh server shares this pool
    load_s = time.perf_counter() - t0
    peak = matmul_peak(device)
    over = counter_overhead(pool.get(opts.model).model, device, opts.n)
    meta = {"model": opts.model, "task": opts.task, "n": opts.n, "device": device, "device_name": device_name(device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "peak_gflops": round(peak, 1),
            "model_load_s": round(load_s, 1), "quick": opts.quick, "variable": variable, "target_cold_s": TARGET_S,
            "flops_method": {"inline": "FlopCounterMode in the timed job (matmuls only)",
                             "separate": "FlopCounterMode in a second, untimed cold + warm pass (matmuls only)",
                             "off": "not counted"}[opts.flops],
            "warm": "same server, force=true (eval_das: seed 1): run cache missed, in-memory caches kept",
            "counter_overhead": over, "load_average_start": os.getloadavg()}
    print(f"{opts.model} loaded on {device} ({meta['device_name']}) in {load_s:.1f} s; torch {torch.__version__}, "
          f"{meta['threads']} threads; float32 matmul peak {peak:.1f} GFLOP/s; load average "
          f"{meta['load_average_start'][0]:.1f}", flush=True)
    print(f"one forward of {over['tokens']} tokens: {over['plain_s']:.3f} s, {over['counted_s']:.3f} s under "
          f"FlopCounterMode ({fmt_flops(over['flops'])}FLOP counted; "
          f"analytic count {fmt_flops(over['analytic_flops'])}FLOP)",
          flush=True)

    n_layers = pool.get(opts.model).model.cfg.n_layers
    layer = opts.layer if opts.layer is not None else (3 * n_layers) // 4
    ctx = {"model": opts.model, "task": opts.task, "n": opts.n, "quick": opts.quick, "layer": layer,
           "task_spec": task_spec, "variable": variable}

    async def warm_up() -> None:
        # imports, allocator and kernels a server's first call pays once, kept out of the first case's cold time
        from mcp import Client
        with fresh_server(pool, FlopLog(count=False)) as server:
            async with Client(server) as client:
                await define_user_task(client, ctx)
                await timed_call(client, "run_baseline", {**_base(ctx), "n": 4}, float("inf"))

    anyio.run(warm_up)
    rows = []
    for name in names:
        if time.perf_counter() > deadline:
            rows.append({"case": name, "status": "skipped (budget)", "note": BY_NAME[name].note})
            continue
        try:
            row = anyio.run(measure, BY_NAME[name], ctx, pool, opts.flops, deadline)
        except OverBudget:
            row = {"case": name, "status": "over budget", "note": BY_NAME[name].note}
        except Exception as e:  # one failing tool must not lose the others' numbers
            while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
                e = e.exceptions[0]
            traceback.print_exception(e)
            row = {"case": name, "status": "failed", "note": f"{type(e).__name__}: {str(e)[:200]}"}
        rows.append(row)
        if "cold" in row:
            print(f"{name}: cold {row['cold']['seconds']:.1f} s, warm {row['warm']['seconds']:.1f} s, "
                  f"{fmt_flops(row['cold']['flops'])}FLOP cold", flush=True)
        else:
            print(f"{name}: {row['status']} {row.get('note', '')}", flush=True)
    meta["total_s"] = round(time.perf_counter() - start, 1)
    meta["load_average_end"] = os.getloadavg()
    # a shared machine's peak moves with its load: measured again at the end, the higher one is reported
    meta["peak_gflops_end"] = round(matmul_peak(device), 1)
    meta["peak_gflops"] = max(meta["peak_gflops"], meta["peak_gflops_end"])
    print()
    print(table(rows, meta, markdown=False))
    if opts.markdown:
        print()
        print(table(rows, meta, markdown=True))
    if opts.json_out:
        Path(opts.json_out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
