"""Tool eval_das: re-test a saved train_das rotation on new data, another counterfactual or another task."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from .. import lazy
from ..artifacts.records import StoreError
from ..methods import das as das_methods
from ..methods.core import Progress, Site
from ..methods.core.footprint import Footprint
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import Seed, Stat, resolve_task
from .das import TRAIN_TOOL
from .das_site import DasSite, das_site_of, das_site_record, interchange_data, prompt_length
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
plots = lazy("mcp_interp.artifacts.plots")
load_file = lazy("safetensors.torch", "load_file")

EVAL_TOOL = "eval_das"


class EvalDasInput(HeavyInput):
    run_id: str = Field(..., description="A train_das run whose rotation to evaluate.")
    model: str | None = Field(None, description="Default: the run's model.")
    task: str | None = Field(None, description="Default: the run's task (another task tests transfer).")
    variable: str | None = Field(None, description="Default: the run's variable.")
    counterfactual: str | None = Field(None, description="Source generator (default: the run's).")
    n: int | None = Field(None, ge=2, le=8192, description="Examples (default: the run's n_train + n_test).")
    seed: Seed | None = Field(None, description="Dataset seed (default: the run's; with the defaults above, "
                             "split='test' reproduces the run's held-out IIA).")
    split: Literal["all", "train", "test"] = Field("all", description="Which part of the new dataset's "
                                                   "base-prompt split to evaluate on.")


class EvalDasResult(RunResult):
    run_id: str
    source_run: str
    task: str
    model: str
    variable: str
    site: DasSite
    k: int
    counterfactual: str | None
    split: str
    iia: Stat
    iia_pair: float
    controls: dict[str, Stat]
    bases_seen_in_training: int = Field(description="evaluated base prompts that were in the source run's "
                                                    "training split")


class EvalDasOutput(HeavyOutput):
    result: EvalDasResult | None = None


def _source_run(app: AppContext, run_id: str) -> dict:
    try:
        rec = app.store.get_run(run_id)
        res = app.store.read_result(run_id)
    except StoreError as e:
        raise ToolError(f"run_id: {e}. Fix: pass the run_id of a completed train_das run.") from None
    if rec.tool != TRAIN_TOOL or "site" not in res:
        raise ToolError(f"run_id: run {run_id} is a {rec.tool!r} run, not train_das; it has no rotation.")
    return res


def _eval_das(run: ToolRun, args: EvalDasInput, src: dict) -> tuple[EvalDasResult, dict]:
    model_id, task = args.model or src["model"], args.task or src["task"]
    variable = args.variable or src["variable"]
    cf = args.counterfactual if args.counterfactual is not None else src["counterfactual"]
    dinfo, s = src["data"], src["site"]
    n, seed = args.n or dinfo["n"], dinfo["seed"] if args.seed is None else args.seed
    spec = resolve_task(run.app, task)
    R = _saved_rotation(run, args.run_id)
    lm = run.load(model_id, at=0.05)
    site = das_site_of(s["kind"], s["layer"], s["head"], lm.model)
    d = site.dim(lm.model)
    if R.shape[0] != d:
        raise ToolError(f"model: the rotation has {R.shape[0]} rows but {site} of {model_id} has dimension {d}; "
                        f"evaluate on a model with the same width.")
    kw = {"seed": seed, "position": s["position"], "source_position": s["source_position"],
          "test_fraction": dinfo["test_fraction"], "counterfactual": cf}
    seq = prompt_length(spec, lm.tokenizer, variable, n, **kw)
    if seq is not None:
        refuse_oversized(_eval_footprint(args, lm.model, site, n, dinfo["test_fraction"], seq, R.shape[1]),
                         f"evaluating DAS at {site} on prompt pairs of about {seq} tokens")
    data = interchange_data(spec, lm.tokenizer, variable, n=n, **kw)
    examples = data.train + data.test if args.split == "all" else data.split(args.split)
    if not examples:
        raise ToolError(f"split: the new dataset's {args.split!r} split is empty; use split='all'.")
    train_bases = _train_bases(run, args.run_id) if task == src["task"] else set()
    run.progress(0.2, "caching base and source runs")
    with lm.use():
        try:
            ev = das_methods.evaluate_saved_rotation(lm.model, R, site, examples, seed=seed, train_bases=train_bases,
                                                     progress=run.span(0.2, 0.95), should_cancel=run.should_cancel)
        except ValueError as e:
            raise ToolError(f"run_id: {e}") from None
    run.open(spec, model_id, lm, seed)
    iia, ctrl = Stat(**ev.iia), {name: Stat(**c) for name, c in ev.controls.items()}
    seen = ev.bases_seen_in_training
    run.publish("result.json")
    _eval_plot(run, args, spec.name, variable, iia, ctrl)
    result = EvalDasResult(
        run_id=run.run_id, source_run=args.run_id, task=spec.name, model=model_id, variable=variable,
        site=das_site_record(site, data.position, data.source_position), k=int(R.shape[1]), counterfactual=cf,
        split=args.split, iia=iia, iia_pair=round(ev.result.iia_pair, 4), controls=ctrl, bases_seen_in_training=seen,
        summary=_eval_summary(args, spec.name, variable, site, int(R.shape[1]), len(examples), iia, ctrl),
        warnings=_eval_warnings(iia, ctrl, seen), files=run.files,
        cost={"total_seconds": run.seconds(), "cache_seconds": round(ev.cache_seconds, 3)})
    return result, {"iia": iia.mean, "source_run": args.run_id}


def _saved_rotation(run: ToolRun, run_id: str):
    """The [d, k] rotation a train_das run stored."""
    try:
        return load_file(str(run.app.store.resolve_file(run_id, "rotation.safetensors")))["rotation"]
    except StoreError as e:
        raise ToolError(f"run_id: {e}") from None


def _train_bases(run: ToolRun, run_id: str) -> set[str]:
    """The base prompts of a train_das run's training split (empty where its split.json cannot be read)."""
    try:
        split = json.loads(run.app.store.resolve_file(run_id, "split.json").read_text("utf-8"))
        return set(split["train_bases"])
    except (StoreError, KeyError, ValueError):
        return set()


def _eval_footprint(args: EvalDasInput, model, site: Site, n: int, test_fraction: float, seq: int,
                    k: int) -> Footprint:
    """Peak memory of the evaluation as a function of n (of which the evaluated split holds about its share)."""
    cfg = model.cfg
    share = {"all": 1.0, "test": test_fraction, "train": 1.0 - test_fraction}[args.split]
    return Footprint(lambda n: das_methods.das_footprint(cfg, site, 0, math.ceil(n * share), seq, k), {"n": n})


def _eval_warnings(iia: Stat, ctrl: dict[str, Stat], seen: int) -> list[str]:
    warnings = []
    if iia.ci95[0] <= ctrl["random_rotation"].ci95[1]:
        warnings.append(f"IIA {iia.mean:.2f} is not above the random-rotation control")
    if seen:
        warnings.append(f"{seen} of the evaluated base prompts were in the source run's training split; "
                        f"use split='test' or another seed for held-out numbers")
    return warnings


def _eval_summary(args: EvalDasInput, task: str, variable: str, site: Site, k: int, n: int, iia: Stat,
                  ctrl: dict[str, Stat]) -> str:
    return (f"rotation of {args.run_id} (k={k}, {site}) on {task}/{variable}, "
            f"{args.split} n={n}: IIA {iia.mean:.2f} [{iia.ci95[0]:.2f}, {iia.ci95[1]:.2f}]; "
            f"random {ctrl['random_rotation'].mean:.2f}, full vector {ctrl['full_vector'].mean:.2f}. Next: "
            + ("the rotation holds here; scrub_hypothesis can test the variable as part of a full hypothesis"
               if iia.ci95[0] > ctrl["random_rotation"].ci95[1] else
               "the rotation does not beat a random one on this data: the variable is not in this subspace "
               "here"))


def _eval_plot(run: ToolRun, args: EvalDasInput, task: str, variable: str, iia: Stat, ctrl: dict[str, Stat]) -> None:
    stats = [iia, *ctrl.values()]
    run.save_figure("iia_bar.png", plots.bar_with_ci(
        ["saved rotation", *ctrl], [x.mean for x in stats], [x.ci95[0] for x in stats],
        [x.ci95[1] for x in stats], title=f"eval of {args.run_id} on {task}/{variable} ({args.split})",
        ylabel="IIA"), main=True)


def eval_das(app: AppContext, args: EvalDasInput, progress: Progress | None = None) -> EvalDasOutput:
    src = _source_run(app, args.run_id)
    task, model = args.task or src["task"], args.model or src["model"]
    spec = resolve_task(app, task)
    return run_heavy(app, EVAL_TOOL, args, spec.name, model, f"eval_das {args.run_id} on {spec.name} ({model})",
                     lambda run, args: _eval_das(run, args, src), EvalDasOutput, progress)


EVAL_DAS = ToolSpec(
    EVAL_TOOL, fn=eval_das, input_model=EvalDasInput, output_model=EvalDasOutput, progress=True, description=(
        "Evaluate the rotation saved by a train_das run on a freshly built interchange dataset (by default the "
        "run's task, variable, counterfactual, n and seed; another task, variable, counterfactual or seed tests "
        "transfer). Returns IIA with a 95% bootstrap CI, the random-rotation and full-vector controls, and how many "
        "evaluated base prompts were in the run's training split. Runs as a job."))
