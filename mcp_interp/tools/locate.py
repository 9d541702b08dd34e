"""Tool locate: exact activation patching over layers × positions × sites — where does the information live?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import BaseModel, Field, field_validator

from .. import lazy
from ..methods.core import Progress
from ..tasks.alignment import align_columns
from ..tasks.dataset import TaskDataset
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .common import DEFAULT_MODEL, MaybeFloat, Stat, metric_note, pair_dataset, per_token_metric, resolve_task
from .errors import ToolError

if TYPE_CHECKING:
    from ..methods.patching import Localisation, SiteGrid
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
plots = lazy("mcp_interp.artifacts.plots")
cell_dict, localise, patch_sweep = lazy("mcp_interp.methods.patching", "cell_dict", "localise", "patch_sweep")

TOOL = "locate"
SiteName = Literal["resid_pre", "attn_out", "mlp_out", "z"]
SITE_DOC = {"resid_pre": "residual stream entering the layer", "attn_out": "attention output",
            "mlp_out": "MLP output", "z": "per-head attention output (hook_z)"}


class LocateInput(HeavyInput):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    task: str = Field(..., description="Task name (list_tasks / define_task).")
    counterfactual: str | None = Field(None, description="Counterfactual generator (default: the task's first).")
    variable: str | None = Field(None, description="Instead of `counterfactual`: use the generator that resamples "
                                 "exactly this variable.")
    sites: list[SiteName] = Field(["resid_pre"], min_length=1, max_length=16,
                                  description="resid_pre, attn_out, mlp_out, z (per head); repeats are dropped.")
    layers: list[int] | None = Field(None, min_length=1, max_length=1024, description="Layers to patch (default: all).")
    positions: Literal["auto", "named", "all"] | list[str] = Field(
        "auto", description="'named' (the task's positions + END), 'all' (every token: by index when the prompts "
        "share a length; otherwise aligned by the named positions and END, the tokens between them right-aligned; "
        "the result's `alignment` says how), a list of named positions, or 'auto' (all if the prompts share a length, "
        "else named).")
    direction: Literal["denoise", "noise"] = Field("denoise",
                                                   description="denoise: patch clean into the counterfactual "
                                                   "run; noise: patch counterfactual into the clean run.")
    metric: Literal["logit_diff", "prob", "prob_diff"] | None = Field(
        None, description="Default: the task's metric (prob_diff: tasks with an answer set, e.g. greater-than).")
    n: int = Field(16, ge=2, le=1024, description="Number of clean/counterfactual pairs.")

    @field_validator("sites", mode="after")
    @classmethod
    def _dedupe_sites(cls, v):
        return list(dict.fromkeys(v))

    @field_validator("positions", mode="after")
    @classmethod
    def _positions_list(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one position name, or 'named' / 'all' / 'auto'")
            if len(v) > 256:
                raise ValueError("at most 256 position names")
            return list(dict.fromkeys(v))
        return v


class CellEffect(BaseModel):
    site: str
    layer: int
    position: str
    head: int | None = None
    effect: MaybeFloat = Field(description="normalised effect (ratio of example means); null when undefined (the "
                               "clean and counterfactual metrics coincide, so there is no gap to normalise by)")
    ci95: list[MaybeFloat] = Field(description="95% bootstrap interval; null where undefined")


class FlowRun(BaseModel):
    layers: list[int] = Field(description="[first, last] layer of the run")
    position: str = Field(description="the position column with the largest effect at each of these layers")
    mean_effect: MaybeFloat = Field(description="mean of that largest effect over the run's layers")


class LocateResult(RunResult):
    run_id: str
    task: str
    model: str
    counterfactual: str
    direction: str
    metric: str
    n: int
    seed: int
    normalisation: str
    clean_metric: Stat
    counterfactual_metric: Stat
    positions: list[str] = Field(description="Column labels of the grids.")
    alignment: str = Field("", description="How the position columns map to each prompt's tokens.")
    layers: list[int]
    best_cells: dict[str, list[CellEffect]] = Field(description="Per site, the 5 cells with the largest |effect|.")
    flow: list[FlowRun] = Field(description="resid_pre: runs of layers whose strongest position is the same — where "
                                "the information sits as depth increases.")


class LocateOutput(HeavyOutput):
    result: LocateResult | None = None


class Columns(NamedTuple):
    """The position columns: labels [P], token index [n][P] of each column in each example, how columns map to
    tokens, and warnings about the mapping."""

    labels: list[str]
    index: list[list[int]]
    alignment: str
    warnings: list[str]


def _positions(ds: TaskDataset, args: LocateInput, tokenizer) -> Columns:
    lengths = {len(e.tokens) for e in ds.examples}
    mode = args.positions
    if mode == "auto":
        mode = "all" if len(lengths) == 1 else "named"
    if mode == "all":
        al = align_columns([e.tokens for e in ds.examples],
                           {k: [e.positions[k] for e in ds.examples] for k in ds.position_names},
                           lambda t: tokenizer.decode([t]))
        return Columns(al.labels, al.index, al.statement, al.warnings)
    names = ds.position_names if mode == "named" else list(mode)
    unknown = [p for p in names if p not in ds.position_names]
    if unknown:
        raise ToolError(f"positions: {unknown} are not positions of task {ds.spec.name!r}; it has "
                        f"{ds.position_names}. Fix: use those names, 'named' or 'all'.")
    return Columns(names, [[e.positions[p] for p in names] for e in ds.examples],
                   "named positions, each resolved in every prompt "
                   "(a column follows its named token wherever it is)", [])


def _locate(run: ToolRun, args: LocateInput) -> tuple[LocateResult, dict]:
    spec = resolve_task(run.app, args.task)
    metric_name = per_token_metric(spec, args.metric, "locate")
    lm = run.load(args.model)
    layers = _layers(args, lm.model.cfg.n_layers)
    ds, metric, clean, corrupt = pair_dataset(spec, lm, args.model, args.n, args.seed, args.variable,
                                              args.counterfactual, metric_name)
    cols = _positions(ds, args, lm.tokenizer)
    with lm.use():
        # the engine is passed by its name here so that a test can stand in for it (tests/server/test_hardening.py)
        loc = localise(lm.model, clean, corrupt, cols.index, args.sites, layers, cols.labels, metric,
                       direction=args.direction, seed=args.seed, progress=run.span(), should_cancel=run.should_cancel,
                       act_cache=run.app.activations, sweep=patch_sweep)
    run.progress(0.94, "plots and store")
    run.open(spec, args.model, lm, args.seed)
    for grid in loc.grids:
        _plots(run, grid, layers, cols.labels, spec, args, len(ds))
    _store(run, args, ds, layers, cols, loc, metric_name)
    best = {g.site: [_cell(c) for c in g.best] for g in loc.grids}
    top = best[loc.strongest().site][0]
    result = LocateResult(
        run_id=run.run_id, task=spec.name, model=args.model, counterfactual=ds.counterfactual,
        direction=args.direction, metric=metric_name, n=len(ds), seed=args.seed,
        normalisation=_normalisation(args.direction), clean_metric=Stat(**loc.clean),
        counterfactual_metric=Stat(**loc.counterfactual), positions=cols.labels, alignment=cols.alignment,
        layers=layers, best_cells=best, flow=[FlowRun(**f) for f in loc.flow],
        summary=_summary(run.run_id, spec.name, top, loc.flow), warnings=_warnings(args, spec, cols, loc, metric_name),
        files=run.files, cost=run.cost(loc.patch.cost(), activation_cache_hits=loc.patch.extra.get("cache_hits", 0)))
    return result, {"top_site": top.site, "top_effect": top.effect, "top_layer": top.layer,
                    "top_position": top.position}


def _layers(args: LocateInput, n_layers: int) -> list[int]:
    layers = list(range(n_layers)) if args.layers is None else sorted(set(args.layers))
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ToolError(f"layers: {bad} out of range; {args.model} has layers 0..{n_layers - 1}.")
    return layers


def _cell(c) -> CellEffect:
    return CellEffect(site=c.site, layer=c.layer, position=c.position, head=c.head, effect=round(c.effect, 4),
                      ci95=[round(c.lo, 4), round(c.hi, 4)])


def _normalisation(direction: str) -> str:
    source, base = ("clean", "counterfactual") if direction == "denoise" else ("counterfactual", "clean")
    return (f"(mean m_patched - mean m_{base}) / (mean m_{source} - mean m_{base}); 95% percentile bootstrap over "
            f"examples")


def _store(run: ToolRun, args: LocateInput, ds, layers: list[int], cols: Columns, loc: Localisation,
           metric_name: str) -> None:
    run.write_tensors("effects.safetensors", loc.tensors())
    run.write_json("grid.json", {"sites": args.sites, "layers": layers, "positions": cols.labels,
                                 "alignment": cols.alignment, "position_index": cols.index,
                                 "n_heads": loc.n_heads,
                                 "cells": [cell_dict(c) for c in loc.cells], "direction": args.direction,
                                 "metric": metric_name, "prompts": [e.prompt for e in ds.examples],
                                 "counterfactual_prompts": [e.cf_prompt for e in ds.examples],
                                 "tensor_layout": "effects.safetensors: {site}.mean/lo/hi [layer, position(, head)], "
                                 "{site}.per_example [example, layer, position(, head)], metric.* per example"})
    run.publish("result.json")


def _warnings(args: LocateInput, spec, cols: Columns, loc: Localisation, metric_name: str) -> list[str]:
    warnings = list(cols.warnings) + metric_note(spec, args.metric, metric_name)
    if loc.patch.extra.get("engine"):
        warnings.append(f"computed by the {loc.patch.extra['engine']}; exact, only slower")
    if loc.n_undefined:
        warnings.append(f"{loc.n_undefined} effects or interval bounds are undefined and reported as null: the clean "
                        f"and counterfactual metrics coincide (in every example, or in bootstrap resamples), so there "
                        f"is no gap to normalise by. Fix: a counterfactual that changes the metric, or a larger n")
    if abs(loc.gap) < 0.5 and metric_name == "logit_diff":
        warnings.append(f"the clean-counterfactual gap is small ({loc.gap:.3f}): normalised effects are noisy")
    return warnings


def _summary(run_id: str, task: str, c0: CellEffect, flow: list[dict]) -> str:
    def num(x):
        return "undefined" if x is None else f"{x:.2f}"

    head = f" head {c0.head}" if c0.head is not None else ""
    summary = (f"strongest cell: {c0.site} layer {c0.layer}{head} at {c0.position}: effect {num(c0.effect)} "
               f"[{num(c0.ci95[0])}, {num(c0.ci95[1])}]")
    if flow:
        summary += "; residual stream: " + ", ".join(
            f"L{f['layers'][0]}-{f['layers'][1]} at {f['position']} ({f['mean_effect']:.2f})" for f in flow)
    return summary + (f". Next: train_das(from_locate_run='{run_id}', variable=...) to ask which variable the "
                      f"strongest cell carries; attribute(task='{task}', level='heads') for a circuit; "
                      f"scrub_hypothesis to test a claim")


def _plots(run: ToolRun, grid: SiteGrid, layers, labels, spec, args, n) -> None:
    what = f"{spec.name} on {args.model}, {args.direction}, n={n}"
    site, mean = grid.site, grid.mean
    if site != "z":
        fig = plots.heatmap(mean, row_labels=[str(l) for l in layers], col_labels=labels,
                            title=f"{SITE_DOC[site]}: normalised patching effect\n{what}",
                            cbar_label="normalised effect", xlabel="position", ylabel="layer")
        run.save_figure(f"{site}_heatmap.png", fig, main=site == args.sites[0])
        return
    # per-head grids: one layer x head map per position column that carries any effect
    for rank, p in enumerate(grid.head_columns):
        fig = plots.heatmap(mean[:, p, :], row_labels=[str(l) for l in layers],
                            col_labels=[str(h) for h in range(mean.shape[2])],
                            title=f"per-head output at {labels[p]}: normalised patching effect\n{what}",
                            cbar_label="normalised effect", xlabel="head", ylabel="layer")
        safe = "".join(ch if ch.isalnum() else "_" for ch in labels[p]).strip("_")
        run.save_figure(f"z_heatmap_{p}_{safe}.png"[:80], fig, main=site == args.sites[0] and rank == 0)


def locate(app: AppContext, args: LocateInput, progress: Progress | None = None) -> LocateOutput:
    spec = resolve_task(app, args.task)
    return run_heavy(app, TOOL, args, spec.name, args.model,
                     f"locate {spec.name} on {args.model} ({', '.join(args.sites)}, n={args.n})",
                     _locate, LocateOutput, progress)


LOCATE = ToolSpec(
    TOOL, fn=locate, input_model=LocateInput, output_model=LocateOutput, progress=True, description=(
        "Where does the information live? Exact activation patching over layers x positions x sites (resid_pre, "
        "attn_out, mlp_out, z = per head) on clean/counterfactual pairs. Denoising (default) patches the clean "
        "activation into the counterfactual run; the normalised effect (m_patched - m_cf) / (m_clean - m_cf) is 1 "
        "where one cell restores the behaviour and 0 where it does nothing, with 95% bootstrap CIs over examples. "
        "Positions: the task's named positions, all tokens (prompts of different lengths are aligned by the named "
        "positions and END; `alignment` states how), or a list. Returns the best cells per site, the layer "
        "ranges where the residual stream carries the information (`flow`), heatmaps (PNG resources) and the full "
        "grid (safetensors). The engine equals a hook-per-cell loop and skips cells that cannot change anything. "
        "Run run_baseline first. Runs as a job; identical requests return the stored run."))
