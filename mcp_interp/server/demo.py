"""`mcp-interp demo`: the research loop on the bundled model, driven through a real MCP client.

Shows progress in the terminal and writes a markdown report with plots into the store.
"""

from __future__ import annotations

import base64
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


async def _save_resource(client, uri: str, dest: Path) -> None:
    res = await client.read_resource(uri)
    item = res.contents[0]
    data = base64.b64decode(item.blob) if getattr(item, "blob", None) else item.text.encode()
    dest.write_bytes(data)


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
            # demo-sized SAE (a few thousand tokens; benchmarks/features_smollm2.py has the full run)
            sae = (await _call(client, bar, "train_sae", {
                "model": model, "site": "resid_pre", "layer": 22, "corpus": "shakespeare", "tokens": 4096,
                "context": 64, "skip_first": 1, "expansion": 2, "k": 32, "epochs": 4, "splice_windows": 4,
                "wait_seconds": 180}))["result"]
            feats = (await _call(client, bar, "find_features", {
                "model": model, "task": "ioi-demo", "variable": "order", "source": "sae", "sae": sae["run_id"],
                "position": "END", "n": 32, "n_perm": 200, "test_top": 2, "interventions": ["zero", "patch"],
                "wait_seconds": 180}))["result"]
        report_dir = Path(server_store_root(store)) / "_reports" / time.strftime("demo-%Y%m%d-%H%M%S")
        report_dir.mkdir(parents=True, exist_ok=True)
        await _save_resource(client, base["files"]["metric_hist.png"], report_dir / "baseline_hist.png")
        await _save_resource(client, resid["files"]["resid_pre_heatmap.png"], report_dir / "locate_resid.png")
        z_png = next(k for k in heads["files"] if k.startswith("z_heatmap"))
        await _save_resource(client, heads["files"][z_png], report_dir / "locate_heads.png")
        await _save_resource(client, attr["files"]["heads_heatmap.png"], report_dir / "attribute_heads.png")
        await _save_resource(client, attr["files"]["faithfulness.png"], report_dir / "attribute_faithfulness.png")
        await _save_resource(client, das["files"]["rank_curve.png"], report_dir / "das_rank_curve.png")
        await _save_resource(client, scrubs[2]["files"]["hypothesis_graph.png"], report_dir / "scrub_graph.png")
        await _save_resource(client, sae["files"]["learning_curve.png"], report_dir / "sae_learning_curve.png")
        await _save_resource(client, feats["files"]["ranking.png"], report_dir / "features_ranking.png")
    m = base["metrics"]
    lines = [
        f"# mcp-interp demo — IOI on {model}", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} in {time.time() - t0:.0f} s through an MCP client.", "",
        "## 1. Baseline: does the model solve the task?", "",
        f"Run `{base['run_id']}` (n={base['n']}, counterfactual `{base['counterfactual']}`). **Verdict:** {base['verdict']}", "",
        "| metric | mean | 95% CI |", "|---|---|---|",
        *[f"| {k} | {v['mean']:.3f} | {v['ci95'][0]:.3f} .. {v['ci95'][1]:.3f} |" for k, v in m.items()], "",
        "| counterfactual generator | label changes | model follows (95% CI) |", "|---|---|---|",
        *[f"| {c['generator']} | {c['label_changes']:.2f} | {c['model_follows']['mean']:.2f} "
          f"({c['model_follows']['ci95'][0]:.2f} .. {c['model_follows']['ci95'][1]:.2f}) |"
          for c in base["counterfactual_checks"]], "",
        "![logit difference per example](baseline_hist.png)", "",
        "## 2. Locate: where does the information live?", "",
        f"Residual stream, every layer × every position, denoising `{resid['counterfactual']}` (run `{resid['run_id']}`, "
        f"{resid['cost']['seconds']:.0f} s; {resid['cost']['skipped']} of {resid['cost']['pairs']} example-cells "
        f"provably zero and skipped). Normalised effect: {resid['normalisation']}.", "",
        f"**{resid['summary']}**", "",
        "| layers | strongest position | mean effect |", "|---|---|---|",
        *[f"| {f['layers'][0]}–{f['layers'][1]} | {f['position']} | {f['mean_effect']:.2f} |" for f in resid["flow"]], "",
        "![residual stream patching](locate_resid.png)", "",
        f"Per-head outputs at END (run `{heads['run_id']}`, {heads['cost']['seconds']:.0f} s): the heads that move the "
        "answer (positive) or push against it (negative):", "",
        "| layer | head | effect | 95% CI |", "|---|---|---|---|",
        *[f"| {c['layer']} | {c['head']} | {c['effect']:.2f} | {c['ci95'][0]:.2f} .. {c['ci95'][1]:.2f} |"
          for c in heads["best_cells"]["z"]], "",
        "![per-head patching at END](locate_heads.png)", "",
        "## 3. Attribute: which heads carry it, and is the circuit faithful?", "",
        f"Attribution patching over all heads at all positions (run `{attr['run_id']}`: {attr['cost']['forwards']} "
        f"example-forwards and {attr['cost']['backwards']} backwards in {attr['cost']['seconds']:.1f} s; the faithfulness "
        f"curve took {attr['cost']['faithfulness_seconds']:.0f} s).", "",
        f"**{attr['summary']}**", "",
        "| head | AtP score | 95% CI |", "|---|---|---|",
        *[f"| {u['name']} | {u['score']:+.2f} | {u['ci95'][0]:+.2f} .. {u['ci95'][1]:+.2f} |" for u in attr["top"][:8]], "",
        f"Circuit: the top {attr['circuit']['size']} heads keep faithfulness {attr['circuit']['faithfulness']:.2f} with "
        "everything else patched from the counterfactual (f > 1: the negative heads left out were pushing against "
        "the answer).", "",
        "![head attribution](attribute_heads.png)", "",
        "![faithfulness curve](attribute_faithfulness.png)", "",
        "## 4. DAS: is the answer name a low-dimensional subspace at END, layer 22?", "",
        f"Run `{das['run_id']}`: interchange the IO variable (sources from `s2_swap`), rank sweep k = 1, 4, 16; the "
        f"held-out split shares {das['shared_bases']} base prompts with training.", "",
        f"**{das['summary']}**", "",
        "| k | held-out IIA | random rotation |", "|---|---|---|",
        *[f"| {k} | {a:.2f} | {r:.2f} |" for k, a, r in zip(das["rank_curve"]["ks"], das["rank_curve"]["test_iia"],
                                                        das["rank_curve"]["random_iia"])],
        f"| full vector | {das['rank_curve']['full_vector_iia']:.2f} | |", "",
        "![rank curve](das_rank_curve.png)", "",
        "## 5. Causal scrubbing: how much do two explanations account for?", "",
        "| hypothesis | loss recovered | logit-diff recovered | zero ablation | mean ablation |", "|---|---|---|---|---|",
        *[f"| {r['hypothesis']} (run `{r['run_id']}`) | {r['loss_recovered']['mean']:.2f} ± {r['loss_recovered']['std']:.2f} "
          f"| {r['metric_recovered']['mean']:.2f} | {r['ablations']['zero']['loss_recovered']['mean']:.2f} "
          f"| {r['ablations']['mean']['loss_recovered']['mean']:.2f} |" for r in scrubs], "",
        "`late-END`: only the residual stream entering layer 24 at END matters, and only through the IO name. "
        "`name-movers`: the six heads that attribution ranks highest, at END, each depending only on the IO name; "
        "everything else resampled.", "",
        "![name-mover hypothesis](scrub_graph.png)", "",
        "## 6. Features: which SAE latents carry the name order at END?", "",
        f"A demo-sized SAE at layer 22 (run `{sae['run_id']}`, {sae['d_sae']} latents, Shakespeare tokens): "
        f"**{sae['summary']}**", "",
        "![SAE learning curve](sae_learning_curve.png)", "",
        f"`find_features` for `order` (ABB / BAB) at END (run `{feats['run_id']}`, n={feats['n']}): **{feats['summary']}**", "",
        "| latent | AUROC | q | intervention | effect | 95% CI |", "|---|---|---|---|---|---|",
        *[f"| {c['name']} | {next(f['score'] for f in feats['features'] if f['feature'] == c['feature']):.3f} "
          f"| {next(f['q'] for f in feats['features'] if f['feature'] == c['feature']):.1e} | {c['intervention']} "
          f"| {_num(c['effect'])} | {_num(c['ci95'][0])} .. {_num(c['ci95'][1])} |" for c in feats["causal"]], "",
        "![feature ranking](features_ranking.png)", "",
    ]
    report = report_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


def _num(x) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


# Hypotheses for the scrubbing section, built from what locate and attribute show on SmolLM2.
LATE_END = {"name": "late-END", "interp": [{"name": "IO", "value": "IO"}], "output": {"parents": ["r24"]},
            "nodes": [{"name": "r24", "kind": "resid", "layer": 24, "position": "END", "interp": "IO"}]}
_MOVERS = [(23, 3), (20, 0), (29, 1), (23, 0), (24, 4), (29, 0)]
NAME_MOVERS = {"name": "name-movers", "interp": [{"name": "IO", "value": "IO"}],
               "output": {"parents": [f"L{l}H{h}" for l, h in _MOVERS]},
               "nodes": [{"name": f"L{l}H{h}", "kind": "head", "layer": l, "head": h, "position": "END", "interp": "IO"}
                         for l, h in _MOVERS]}


def server_store_root(store: str | None) -> str:
    import os
    return str(Path(store or os.environ.get("MCP_INTERP_STORE") or "artifacts").resolve())


def run_demo(store: str | None = None, model: str = "smollm2-135m", n: int = 16) -> int:
    try:
        report = anyio.run(_demo, store, model, n)
    except DemoError as e:
        console.print(f"[red]demo failed:[/red] {e}")
        return 1
    console.print(f"[green]Report written to[/green] {report}")
    sys.stdout.write(f"{report}\n")  # the report path, for scripts (the demo is not the stdio server)
    return 0
