"""`mcp-interp demo`: the research loop on the bundled model, driven through a real MCP client.

Shows progress in the terminal; the `report` tool writes the report (markdown + self-contained HTML, every number
beside its run id) into the store as a run of its own.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .app import build_server

console = Console(stderr=True)


class DemoError(RuntimeError):
    pass


async def _call(client, progress: Progress, name: str, args: dict[str, Any]) -> dict:
    task_id = progress.add_task(name, total=1.0)

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.update(task_id, completed=p / (total or 1.0), description=f"{name}: {message or ''}"[:90])

    res = await client.call_tool(name, args, progress_callback=on_progress)
    if res.is_error:
        raise DemoError(f"{name} failed: {res.content[0].text if res.content else res}")
    out = res.structured_content or {}
    while out.get("status") in ("running", "queued"):
        job_id = out["job"]["job_id"]
        res = await client.call_tool("get_job", {"job_id": job_id, "wait_seconds": 60}, progress_callback=on_progress)
        job = res.structured_content or {}
        if job.get("status") == "complete":
            out = {"status": "complete", "result": job["result"]}
        elif job.get("status") in ("failed", "cancelled", "interrupted"):
            raise DemoError(f"{name} job {job_id} {job['status']}: {job.get('error')}")
    progress.update(task_id, completed=1.0, description=f"{name}: done")
    return out


async def _demo(store: str | None, model: str, n: int) -> Path:
    from mcp import Client

    server = build_server(store)
    t0 = time.time()
    async with Client(server) as client:
        tools = [t.name for t in (await client.list_tools()).tools]
        console.print(f"[bold]mcp-interp demo[/bold]: {len(tools)} tools over a real MCP client: {', '.join(tools)}")
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console) as bar:
            ioi = (await client.call_tool("get_task", {"task": "ioi"})).structured_content["spec"]
            ioi.update(name="ioi-demo", description="IOI, defined through define_task by the demo")
            defined = await client.call_tool("define_task", {**ioi, "validate_with_model": model, "overwrite": True})
            if defined.is_error:
                raise DemoError(defined.content[0].text)
            base = (await _call(client, bar, "run_baseline", {"model": model, "task": "ioi-demo", "n": n,
                                                              "wait_seconds": 60}))["result"]
            if not base["solves"]:
                raise DemoError(f"baseline: {base['verdict']}")
            resid = (await _call(client, bar, "locate", {"model": model, "task": "ioi-demo", "n": n,
                                                         "sites": ["resid_pre"], "positions": "all",
                                                         "wait_seconds": 60}))["result"]
            heads = (await _call(client, bar, "locate", {"model": model, "task": "ioi-demo", "n": n, "sites": ["z"],
                                                         "positions": ["END"], "wait_seconds": 60}))["result"]
            lens = (await _call(client, bar, "logit_lens", {"model": model, "task": "ioi-demo", "n": n,
                                                            "positions": ["END"], "wait_seconds": 60}))["result"]
            looks = (await _call(client, bar, "attention", {"model": model, "task": "ioi-demo", "n": n,
                                                            "heads": [f"L{l}H{h}" for l, h in _MOVERS],
                                                            "prefer": ["IO", "S1"], "wait_seconds": 60}))["result"]
            attr = (await _call(client, bar, "attribute", {"model": model, "task": "ioi-demo", "n": n,
                                                           "method": "atp", "level": "heads",
                                                           "wait_seconds": 120}))["result"]
            das = (await _call(client, bar, "train_das", {
                "model": model, "task": "ioi-demo", "variable": "IO", "counterfactual": "s2_swap", "site": "resid_pre",
                "layer": 22, "position": "END", "k": [1, 4, 16], "epochs": 4, "n_train": 96, "n_test": 48,
                "wait_seconds": 180}))["result"]
            scrubs = [(await _call(client, bar, "scrub_hypothesis", {
                "model": model, "task": "ioi-demo", "hypothesis": hyp, "n": 64, "seeds": 2, "contributions": True,
                "wait_seconds": 180}))["result"] for hyp in ("nothing", LATE_END, NAME_MOVERS)]
            probed = (await _call(client, bar, "probe", {
                "model": model, "task": "ioi-demo", "variable": "order", "layers": [16, 20, 24], "n": 64,
                "wait_seconds": 120}))["result"]
            # does the DAS direction for IO change the answer? (against an equal-norm random direction)
            steered = (await _call(client, bar, "steer", {
                "model": model, "task": "ioi-demo", "n": n, "positions": ["END"], "alphas": [-8.0, 0.0, 8.0],
                "intervention": {"kind": "feature", "source": "das", "das_run": das["run_id"], "index": 0},
                "n_generate": 2, "max_new_tokens": 6, "wait_seconds": 180}))["result"]
            # pretrained SAEs for this model in the sae-lens registry (read offline); none for SmolLM2, so train one
            pretrained = (await client.call_tool("list_saes", {"model": model})).structured_content or {}
            console.print(f"list_saes: {pretrained.get('summary', 'no answer')}")
            # demo-sized SAE (a few thousand tokens; benchmarks/features_smollm2.py has the full run)
            sae = (await _call(client, bar, "train_sae", {
                "model": model, "site": "resid_pre", "layer": 22, "corpus": "shakespeare", "tokens": 4096,
                "context": 64, "skip_first": 1, "expansion": 2, "k": 32, "epochs": 4, "splice_windows": 4,
                "wait_seconds": 180}))["result"]
            feats = (await _call(client, bar, "find_features", {
                "model": model, "task": "ioi-demo", "variable": "order", "source": "sae", "sae": sae["run_id"],
                "position": "END", "n": 32, "n_perm": 200, "test_top": 2, "interventions": ["zero", "patch"],
                "wait_seconds": 180}))["result"]
            # is the DAS direction for IO one of the SAE's latents? (same layer and space: decoder cosines too)
            compared = (await _call(client, bar, "compare_features", {
                "a": {"model": model, "source": "das", "das_run": das["run_id"]},
                "b": {"model": model, "source": "sae", "sae": sae["run_id"]},
                "task": "ioi-demo", "variable": "IO", "counterfactual": "s2_swap", "position": "END", "n": 64,
                "n_null": 20, "n_perm": 99, "test_top": 2, "wait_seconds": 180}))["result"]
            # attribution graph of one IOI prompt: demo-sized transcoders on every MLP (the README's full run:
            # benchmarks/trace_real_models.py), then trace the first example's answer-minus-counterfactual logit
            n_layers = (await client.call_tool("load_model", {"model": model})).structured_content["config"]["n_layers"]
            tcs = (await _call(client, bar, "train_transcoders", {
                "model": model, "layers": list(range(n_layers)), "corpus": "shakespeare", "n_tokens": 2048,
                "epochs": 2, "width": 1024, "k": 16, "splice_windows": 2, "wait_seconds": 180}))["result"]
            traced = (await _call(client, bar, "trace", {
                "model": model, "task": "ioi-demo", "example": 0, "transcoders": tcs["run_id"],
                "max_feature_nodes": 1024, "contexts_tokens": 256, "check_top": 4, "wait_seconds": 180}))["result"]
            # one tool over a grid: the baseline at two seeds (each point a normal, cached job)
            swept = (await _call(client, bar, "sweep", {
                "tool": "run_baseline", "base": {"model": model, "task": "ioi-demo", "n": n},
                "grid": {"seed": [0, 1]}, "wait_seconds": 180}))["result"]
            runs = [base, resid, heads, lens, looks, attr, das, *scrubs, probed, steered, sae, feats, compared, tcs,
                    traced, swept]
            report = await _call(client, bar, "report", {"run_ids": [r["run_id"] for r in runs],
                                                         "title": f"mcp-interp demo — IOI on {model}"})
    console.print(f"{report['summary']} ({time.time() - t0:.0f} s in all)")
    return Path(report["html_path"]).with_name("report.md")


# Hypotheses for the scrubbing section, built from what locate and attribute show on SmolLM2.
LATE_END = {"name": "late-END", "interp": [{"name": "IO", "value": "IO"}], "output": {"parents": ["r24"]},
            "nodes": [{"name": "r24", "kind": "resid", "layer": 24, "position": "END", "interp": "IO"}]}
_MOVERS = [(23, 3), (20, 0), (29, 1), (23, 0), (24, 4), (29, 0)]
NAME_MOVERS = {"name": "name-movers", "interp": [{"name": "IO", "value": "IO"}],
               "output": {"parents": [f"L{l}H{h}" for l, h in _MOVERS]},
               "nodes": [{"name": f"L{l}H{h}", "kind": "head", "layer": l, "head": h, "position": "END", "interp": "IO"}
                         for l, h in _MOVERS]}


def run_demo(store: str | None = None, model: str = "smollm2-135m", n: int = 16) -> int:
    try:
        report = anyio.run(_demo, store, model, n)
    except DemoError as e:
        console.print(f"[red]demo failed:[/red] {e}")
        return 1
    console.print(f"[green]Report written to[/green] {report}")
    sys.stdout.write(f"{report}\n")  # the report path, for scripts (the demo is not the stdio server)
    return 0
