"""Tool locate: exact activation patching over layers × positions × sites — where does the information live?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from .. import lazy
from ..methods.core import Progress, ci_dict
from ..tasks.alignment import align_columns
from ..tasks.dataset import TaskDataset
from .base import FORCE_FIELD, PLOT_FIELD, WAIT_FIELD, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .common import DEFAULT_MODEL, MaybeFloat, Seed, Stat, metric_note, pair_dataset, per_token_metric, resolve_task
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
torch = lazy("torch")
plots = lazy("mcp_interp.artifacts.plots")
cell_dict, dominant_positions, grid_cells, normalised_effects, patch_sweep, top_cells = lazy(
    "mcp_interp.methods.patching", "cell_dict", "dominant_positions", "grid_cells", "normalised_effects",
    "patch_sweep", "top_cells")

TOOL = "locate"
SiteName = Literal["resid_pre", "attn_out", "mlp_out", "z"]
SITE_DOC = {"resid_pre": "residual stream entering the layer", "attn_out": "attention output",
            "mlp_out": "MLP output", "z": "per-head attention output (hook_z)"}


class LocateInput(BaseModel):
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
    direction: Literal["denoise", "noise"] = Field("denoise", description="denoise: patch clean into the counterfactual "
                                                   "run; noise: patch counterfactual into the clean run.")
    metric: Literal["logit_diff", "prob", "prob_diff"] | None = Field(
        None, description="Default: the task's metric (prob_diff: tasks with an answer set, e.g. greater-than).")
    n: int = Field(16, ge=2, le=1024, description="Number of clean/counterfactual pairs.")
    seed: Seed = 0
    force: bool = FORCE_FIELD
    wait_seconds: float = WAIT_FIELD
    include_plot: bool = PLOT_FIELD

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
    flow: list[dict] = Field(description="resid_pre: runs of layers whose strongest position is the same — where the "
                             "information sits as depth increases.")


class LocateOutput(HeavyOutput):
    result: LocateResult | None = None


def _positions(ds: TaskDataset, args: LocateInput, tokenizer) -> tuple[list[str], torch.Tensor, str, list[str]]:
    """(column labels, [n, P] token index per example, how columns map to tokens, warnings)."""
    lengths = {len(e.tokens) for e in ds.examples}
    mode = args.positions
    if mode == "auto":
        mode = "all" if len(lengths) == 1 else "named"
    if mode == "all":
        al = align_columns([e.tokens for e in ds.examples],
                           {k: [e.positions[k] for e in ds.examples] for k in ds.position_names},
                           lambda t: tokenizer.decode([t]))
        return al.labels, torch.tensor(al.index), al.statement, al.warnings
    names = ds.position_names if mode == "named" else list(mode)
    unknown = [p for p in names if p not in ds.position_names]
    if unknown:
        raise ToolError(f"positions: {unknown} are not positions of task {ds.spec.name!r}; it has "
                        f"{ds.position_names}. Fix: use those names, 'named' or 'all'.")
    return (names, torch.tensor([[e.positions[p] for p in names] for e in ds.examples]),
            "named positions, each resolved in every prompt (a column follows its named token wherever it is)", [])


def _locate(run: ToolRun, args: LocateInput) -> tuple[LocateResult, dict]:
    spec = resolve_task(run.app, args.task)
    metric_name = per_token_metric(spec, args.metric, "locate")
    lm = run.load(args.model)
    cfg = lm.model.cfg
    layers = list(range(cfg.n_layers)) if args.layers is None else sorted(set(args.layers))
    bad = [l for l in layers if not 0 <= l < cfg.n_layers]
    if bad:
        raise ToolError(f"layers: {bad} out of range; {args.model} has layers 0..{cfg.n_layers - 1}.")
    ds, metric, clean, corrupt = pair_dataset(spec, lm, args.model, args.n, args.seed, args.variable,
                                              args.counterfactual, metric_name)
    labels, pos, alignment, pos_warnings = _positions(ds, args, lm.tokenizer)
    cells = grid_cells(args.sites, layers, len(labels), cfg.n_heads)
    with lm.use():
        res = patch_sweep(lm.model, clean, corrupt, pos, cells, metric, direction=args.direction,
                          progress=run.span(), should_cancel=run.should_cancel, act_cache=run.app.activations)
    run.progress(0.94, "bootstrap and plots")
    eff = normalised_effects(res, seed=args.seed)
    return _result(run, args, spec, lm, ds, (labels, pos, alignment, pos_warnings), layers, cells, res, eff,
                   metric_name)


def _reshape(v: np.ndarray, site: str, n_layers: int, n_pos: int, n_heads: int) -> np.ndarray:
    return v.reshape(*v.shape[:-1], n_layers, n_pos, n_heads) if site == "z" else v.reshape(*v.shape[:-1], n_layers, n_pos)


def _result(run: ToolRun, args, spec, lm, ds, columns, layers, cells, res, eff, metric_name) -> tuple[LocateResult, dict]:
    labels, pos, alignment, pos_warnings = columns
    H, L, P = lm.model.cfg.n_heads, len(layers), len(labels)
    run.open(spec, args.model, lm, args.seed)
    tensors, best, offset, flow = {}, {}, 0, []
    for site in args.sites:
        size = L * P * (H if site == "z" else 1)
        sl = slice(offset, offset + size)
        offset += size
        grids = {k: _reshape(eff[k][..., sl], site, L, P, H) for k in ("mean", "lo", "hi", "per_example")}
        for k, v in grids.items():
            tensors[f"{site}.{k}"] = torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32)
        best[site] = []
        for idx, e, lo, hi in top_cells(grids["mean"], grids["lo"], grids["hi"]):
            best[site].append(CellEffect(site=site, layer=layers[idx[0]], position=labels[idx[1]],
                                         head=idx[2] if site == "z" else None, effect=round(e, 4),
                                         ci95=[round(lo, 4), round(hi, 4)]))
        _plots(run, site, grids["mean"], layers, labels, spec, args, len(ds))
        if site == "resid_pre":
            flow = dominant_positions(grids["mean"], layers, labels)
    tensors["metric.clean"], tensors["metric.counterfactual"] = res.clean, res.corrupt
    tensors["metric.patched"] = res.patched
    run.write_tensors("effects.safetensors", tensors)
    run.write_json("grid.json", {"sites": args.sites, "layers": layers, "positions": labels, "alignment": alignment,
                                 "position_index": pos.tolist(), "n_heads": H,
                                 "cells": [cell_dict(c) for c in cells], "direction": args.direction,
                                 "metric": metric_name, "prompts": [e.prompt for e in ds.examples],
                                 "counterfactual_prompts": [e.cf_prompt for e in ds.examples],
                                 "tensor_layout": "effects.safetensors: {site}.mean/lo/hi [layer, position(, head)], "
                                 "{site}.per_example [example, layer, position(, head)], metric.* per example"})
    run.publish("result.json")
    warnings = list(pos_warnings) + metric_note(spec, args.metric, metric_name)
    if res.extra.get("engine"):
        warnings.append(f"computed by the {res.extra['engine']}; exact, only slower")
    undefined = int(np.sum(~np.isfinite(eff["mean"])) + np.sum(~np.isfinite(eff["lo"]) | ~np.isfinite(eff["hi"])))
    if undefined:
        warnings.append(f"{undefined} effects or interval bounds are undefined and reported as null: the clean and "
                        f"counterfactual metrics coincide (in every example, or in bootstrap resamples), so there is "
                        f"no gap to normalise by. Fix: a counterfactual that changes the metric, or a larger n")
    if abs(eff["gap"]) < 0.5 and metric_name == "logit_diff":
        warnings.append(f"the clean-counterfactual gap is small ({eff['gap']:.3f}): normalised effects are noisy")
    top_site = max(best, key=lambda s: abs(best[s][0].effect or 0.0) if best[s] else 0)
    c0 = best[top_site][0]
    head = f" head {c0.head}" if c0.head is not None else ""
    def num(x):
        return "undefined" if x is None else f"{x:.2f}"

    summary = (f"strongest cell: {top_site} layer {c0.layer}{head} at {c0.position}: effect {num(c0.effect)} "
               f"[{num(c0.ci95[0])}, {num(c0.ci95[1])}]")
    if flow:
        summary += "; residual stream: " + ", ".join(
            f"L{f['layers'][0]}-{f['layers'][1]} at {f['position']} ({f['mean_effect']:.2f})" for f in flow)
    summary += (f". Next: train_das(from_locate_run='{run.run_id}', variable=...) to ask which variable the strongest "
                f"cell carries; attribute(task='{spec.name}', level='heads') for a circuit; scrub_hypothesis to "
                f"test a claim")
    base_name = "clean" if args.direction == "denoise" else "counterfactual"
    result = LocateResult(
        run_id=run.run_id, task=spec.name, model=args.model, counterfactual=ds.counterfactual,
        direction=args.direction, metric=metric_name, n=len(ds), seed=args.seed,
        normalisation=(f"(mean m_patched - mean m_{'counterfactual' if args.direction == 'denoise' else 'clean'}) / "
                       f"(mean m_{base_name} - mean m_{'counterfactual' if args.direction == 'denoise' else 'clean'})"
                       f"; 95% percentile bootstrap over examples"),
        clean_metric=Stat(**ci_dict(res.clean.numpy(), seed=args.seed)),
        counterfactual_metric=Stat(**ci_dict(res.corrupt.numpy(), seed=args.seed)),
        positions=labels, alignment=alignment, layers=layers, best_cells=best, flow=flow, summary=summary, warnings=warnings,
        files=run.files, cost=run.cost(res.cost(), activation_cache_hits=res.extra.get("cache_hits", 0)))
    return result, {"top_site": top_site, "top_effect": c0.effect, "top_layer": c0.layer, "top_position": c0.position}


def _plots(run: ToolRun, site, mean, layers, labels, spec, args, n) -> None:
    what = f"{spec.name} on {args.model}, {args.direction}, n={n}"
    if site != "z":
        fig = plots.heatmap(mean, row_labels=[str(l) for l in layers], col_labels=labels,
                            title=f"{SITE_DOC[site]}: normalised patching effect\n{what}",
                            cbar_label="normalised effect", xlabel="position", ylabel="layer")
        run.save_figure(f"{site}_heatmap.png", fig, main=site == args.sites[0])
        return
    # per-head grids: one layer x head map per position column that carries any effect
    strength = np.nan_to_num(np.abs(mean)).max(axis=(0, 2))
    for rank, p in enumerate([int(i) for i in np.argsort(-strength)[:4] if strength[i] > 0.02] or [len(labels) - 1]):
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
