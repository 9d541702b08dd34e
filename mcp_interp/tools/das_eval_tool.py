"""Tool eval_das: re-test a rotation saved by train_das on new data, another counterfactual or another task."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file

from ..artifacts import plots
from ..artifacts.records import StoreError
from ..methods.core import Cancelled
from ..methods.das import evaluate_rotation, prepare, random_rotation
from ..runtime.task_registry import task_hash
from ..tasks.causal import TaskSpecError
from ..tasks.interchange import build_interchange_dataset
from .common import Stat, get_model, get_task
from .errors import ToolError
from .runner import WAIT_FIELD, HeavyOutput, ProgressFn, RunResult, run_heavy, save_png

if TYPE_CHECKING:
    from ..runtime.context import AppContext

from .das_tool import TOOL, DasSite, _das_site, _data_error, _site, _stat

EVAL_TOOL = "eval_das"


class EvalDasInput(BaseModel):
    run_id: str = Field(..., description="A train_das run whose rotation to evaluate.")
    model: str | None = Field(None, description="Default: the run's model.")
    task: str | None = Field(None, description="Default: the run's task (another task tests transfer).")
    variable: str | None = Field(None, description="Default: the run's variable.")
    counterfactual: str | None = Field(None, description="Source generator (default: the run's).")
    n: int | None = Field(None, ge=2, le=8192, description="Examples (default: the run's n_train + n_test).")
    seed: int | None = Field(None, description="Dataset seed (default: the run's; with the defaults above, "
                             "split='test' reproduces the run's held-out IIA).")
    split: Literal["all", "train", "test"] = Field("all", description="Which part of the new dataset's "
                                                   "base-prompt split to evaluate on.")
    wait_seconds: float = WAIT_FIELD


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
    bases_seen_in_training: int = Field(description="evaluated base prompts that were in the source run's training split")


class EvalDasOutput(HeavyOutput):
    result: EvalDasResult | None = None


# ------------------------------------------------------------------ argument resolution

def _source_run(app: AppContext, run_id: str) -> dict:
    try:
        rec = app.store.get_run(run_id)
        res = app.store.read_result(run_id)
    except StoreError as e:
        raise ToolError(f"run_id: {e}. Fix: pass the run_id of a completed train_das run.") from None
    if rec.tool != TOOL or "site" not in res:
        raise ToolError(f"run_id: run {run_id} is a {rec.tool!r} run, not train_das; it has no rotation.")
    return res


def _eval_work(app: AppContext, args: EvalDasInput, src: dict, params: dict):
    def work(job) -> dict:
        t0 = time.time()
        model_id, task = args.model or src["model"], args.task or src["task"]
        variable = args.variable or src["variable"]
        cf = args.counterfactual if args.counterfactual is not None else src["counterfactual"]
        dinfo = src["data"]
        n, seed = args.n or dinfo["n"], dinfo["seed"] if args.seed is None else args.seed
        spec = get_task(app, task)
        try:
            R = load_file(str(app.store.resolve_file(args.run_id, "rotation.safetensors")))["rotation"]
        except StoreError as e:
            raise ToolError(f"run_id: {e}") from None
        job.progress(0.05, f"loading {model_id}")
        lm = get_model(app, model_id)
        s = src["site"]
        site = _site(s["kind"], s["layer"], s["head"], lm.model)
        d = site.dim(lm.model)
        if R.shape[0] != d:
            raise ToolError(f"model: the rotation has {R.shape[0]} rows but {site} of {model_id} has dimension {d}; "
                            f"evaluate on a model with the same width.")
        try:
            data = build_interchange_dataset(spec, lm.tokenizer, variable, n=n, seed=seed, position=s["position"],
                                             source_position=s["source_position"],
                                             test_fraction=dinfo["test_fraction"], counterfactual=cf)
        except TaskSpecError as e:
            raise _data_error(e) from None
        examples = data.train + data.test if args.split == "all" else data.split(args.split)
        if not examples:
            raise ToolError(f"split: the new dataset's {args.split!r} split is empty; use split='all'.")
        job.progress(0.2, "caching base and source runs")
        with lm.use():
            try:
                cache = prepare(lm.model, examples, site, should_cancel=lambda: job.cancelled)
                r = evaluate_rotation(lm.model, R, site, examples, cache=cache)
                job.progress(0.7, "controls")
                rnd = evaluate_rotation(lm.model, random_rotation(d, R.shape[1], seed), site, examples, cache=cache)
                full = evaluate_rotation(lm.model, torch.eye(d), site, examples, cache=cache)
            except Cancelled:
                job.check_cancelled()
                raise
            except ValueError as e:
                raise ToolError(f"run_id: {e}") from None
        train_bases = set()
        try:
            split = json.loads(app.store.resolve_file(args.run_id, "split.json").read_text("utf-8"))
            train_bases = set(split["train_bases"])
        except (StoreError, KeyError, ValueError):
            pass
        seen = len({e.base_key for e in examples} & train_bases) if task == src["task"] else 0
        run = app.store.create_run(EVAL_TOOL, spec.name, model_id, params, seed=seed,
                                   model_info={"weight_hash": lm.weight_hash, "device": lm.device},
                                   task_hash=task_hash(spec))
        try:
            iia = _stat(r.correct.numpy(), seed)
            ctrl = {"random_rotation": _stat(rnd.correct.numpy(), seed), "full_vector": _stat(full.correct.numpy(), seed)}
            warnings = []
            if iia.ci95[0] <= ctrl["random_rotation"].ci95[1]:
                warnings.append(f"IIA {iia.mean:.2f} is not above the random-rotation control")
            if seen:
                warnings.append(f"{seen} of the evaluated base prompts were in the source run's training split; "
                                f"use split='test' or another seed for held-out numbers")
            files = {"result.json": f"artifact://{run.run_id}/result.json"}
            stats = [iia, *ctrl.values()]
            files |= save_png(run, "iia_bar.png", plots.bar_with_ci(
                ["saved rotation", *ctrl], [x.mean for x in stats], [x.ci95[0] for x in stats],
                [x.ci95[1] for x in stats], title=f"eval of {args.run_id} on {spec.name}/{variable} ({args.split})",
                ylabel="IIA"))
            result = EvalDasResult(
                run_id=run.run_id, source_run=args.run_id, task=spec.name, model=model_id, variable=variable,
                site=_das_site(site, data.position, data.source_position), k=int(R.shape[1]), counterfactual=cf,
                split=args.split, iia=iia, iia_pair=round(r.iia_pair, 4), controls=ctrl,
                bases_seen_in_training=seen,
                summary=(f"rotation of {args.run_id} (k={R.shape[1]}, {site}) on {spec.name}/{variable}, "
                         f"{args.split} n={len(examples)}: IIA {iia.mean:.2f} [{iia.ci95[0]:.2f}, {iia.ci95[1]:.2f}]; "
                         f"random {ctrl['random_rotation'].mean:.2f}, full vector {ctrl['full_vector'].mean:.2f}"),
                warnings=warnings, files=files, cost={"total_seconds": round(time.time() - t0, 2),
                                                      "cache_seconds": round(cache.seconds, 3)})
            out = result.model_dump(mode="json")
            run.finish(out, metrics={"iia": iia.mean, "source_run": args.run_id})
        except BaseException as e:
            run.fail(f"{type(e).__name__}: {e}")
            raise
        return out
    return work


def eval_das_tool(app: AppContext, args: EvalDasInput, progress: ProgressFn | None = None) -> EvalDasOutput:
    src = _source_run(app, args.run_id)
    task, model = args.task or src["task"], args.model or src["model"]
    spec = get_task(app, task)
    return run_heavy(app, EVAL_TOOL, args, spec.name, model,
                     f"eval_das {args.run_id} on {spec.name} ({model})",
                     lambda params: _eval_work(app, args, src, params), EvalDasOutput, progress)
