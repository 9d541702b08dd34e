"""Tools train_das / eval_das: is a task variable represented along a (low-dimensional) subspace at one site?

Distributed alignment search (methods/das.py) trains a d x k rotation at one site so that interchanging the
subspace between a base and a source run produces the causal model's counterfactual label. Held-out IIA is on
base prompts never seen in training (tasks/interchange.py); the random-rotation and full-vector controls run on
the same test split.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from ..artifacts import plots
from ..artifacts.records import StoreError
from ..methods.core import Cancelled, ci_dict
from ..methods.das import Site, check_site, random_rotation, rank_sweep, train_boundless_das, train_das
from ..runtime.task_registry import task_hash
from ..tasks.causal import TaskSpecError
from ..tasks.interchange import build_interchange_dataset
from .common import DEFAULT_MODEL, Stat, get_model, get_task
from .errors import ToolError
from .runner import WAIT_FIELD, HeavyOutput, ProgressFn, RunResult, run_heavy, save_png

if TYPE_CHECKING:
    from ..runtime.context import AppContext

TOOL = "train_das"
SiteKind = Literal["resid_pre", "resid_post", "attn_out", "mlp_out", "z"]
_LOCATE_SITES = {"resid_pre", "resid_post", "attn_out", "mlp_out", "z"}


class TrainDasInput(BaseModel):
    model: str | None = Field(None, description=f"Model id (list_models). Default: from_locate_run's model, else "
                              f"{DEFAULT_MODEL}.")
    task: str | None = Field(None, description="Task name (list_tasks). Required unless from_locate_run gives it.")
    variable: str = Field(..., description="The causal variable (input variable or mechanism) to align, e.g. 'IO'.")
    site: SiteKind | None = Field(None, description="Where to intervene (default resid_pre): the residual stream "
                                  "before/after block `layer`, an attention or MLP output, or z = one head's output "
                                  "(needs `head`). With from_locate_run: only that site's cells are considered.")
    layer: int | None = Field(None, description="Block index (required unless from_locate_run).")
    head: int | None = Field(None, description="Head index, for site 'z' only.")
    position: str = Field("END", description="Named task position of the base prompt to intervene at.")
    source_position: str | None = Field(None, description="Named position of the source prompt (default: position).")
    from_locate_run: str | None = Field(None, description="Run id of an earlier `locate` run: use its best cell "
                                        "(site, layer, head, position; restricted to `site` if you pass one), its "
                                        "task and model.")
    k: int | list[int] = Field(1, description="Subspace dimension; a list runs a rank sweep (held-out IIA vs k with "
                               "controls) and reports the knee.")
    method: Literal["das", "boundless"] = Field("das", description="das: fixed k. boundless: learns k with a "
                                                "soft mask over a full rotation (Boundless DAS); `k` is ignored.")
    epochs: int = Field(10, ge=1, le=200)
    lr: float = Field(1e-2, gt=0, le=1.0)
    batch_size: int = Field(32, ge=1, le=1024)
    n_train: int = Field(128, ge=1, le=8192, description="Training examples (base prompts split from test).")
    n_test: int = Field(64, ge=1, le=4096, description="Held-out examples (no base prompt shared with training).")
    seed: int = 0
    restarts: int = Field(1, ge=1, le=10, description="Train from seeds seed..seed+restarts-1; keep the lowest "
                          "final training loss (never chosen on test data).")
    counterfactual: str | None = Field(None, description="Source generator of the task (default: fresh samples of "
                                       "the causal model).")
    force: bool = Field(False, description="Recompute even if an identical run is stored.")
    wait_seconds: float = WAIT_FIELD


class DasSite(BaseModel):
    kind: str
    hook: str
    layer: int
    head: int | None = None
    position: str
    source_position: str


class RankCurve(BaseModel):
    ks: list[int]
    test_iia: list[float]
    random_iia: list[float]
    full_vector_iia: float
    knee_k: int | None = Field(description="smallest k whose gain over the random control reaches 90% of the best")
    rule: str


class TrainDasResult(RunResult):
    run_id: str
    task: str
    model: str
    variable: str
    site: DasSite
    k: int = Field(description="dimension of the reported rotation (the knee for a sweep; effective k for boundless)")
    method: str
    counterfactual: str | None
    train_iia: Stat
    test_iia: Stat = Field(description="held-out IIA (argmax over the vocabulary == counterfactual label)")
    test_iia_pair: float = Field(description="held-out: label logit > base answer logit")
    controls: dict[str, Stat] = Field(description="random_rotation (same k) and full_vector patching, on the test split")
    base_accuracy: float = Field(description="test base prompts without intervention: argmax == base answer")
    rank_curve: RankCurve | None = None
    learning_curve: list[dict]
    boundless: dict | None = None
    n_train: int
    n_test: int
    n_train_bases: int
    n_test_bases: int
    shared_bases: int = Field(description="base prompts in both train and test (0: the split is clean)")
    data: dict = Field(description="how the interchange data was built (for eval_das and reproduction)")


class TrainDasOutput(HeavyOutput):
    result: TrainDasResult | None = None


def _from_locate(app: AppContext, args: TrainDasInput) -> TrainDasInput:
    """Fill task, model, site, layer, head and position from a locate run's best cell."""
    try:
        res = app.store.read_result(args.from_locate_run)
    except StoreError as e:
        raise ToolError(f"from_locate_run: {e}. Fix: pass the run_id of a completed `locate` run (list_runs "
                        f"tool='locate').") from None
    cells = res.get("best_cells")
    if not isinstance(cells, dict) or not cells:
        raise ToolError(f"from_locate_run: run {args.from_locate_run} is not a `locate` run (no best_cells).")
    if args.site is not None:
        if args.site not in cells:
            raise ToolError(f"site: locate run {args.from_locate_run} has no cells for site {args.site!r}; it has "
                            f"{sorted(cells)}.")
        pool = list(cells[args.site])
    else:
        pool = [c for s, cs in cells.items() if s in _LOCATE_SITES for c in cs]
    pool = [c for c in pool if c.get("effect") is not None]
    if not pool:
        raise ToolError(f"from_locate_run: run {args.from_locate_run} has no usable cells for DAS.")
    best = max(pool, key=lambda c: abs(c["effect"]))
    upd = {"site": best["site"], "layer": int(best["layer"]), "head": best.get("head"),
           "position": str(best["position"])}
    if args.task is None:
        upd["task"] = res.get("task")
    if args.model is None:
        upd["model"] = res.get("model", DEFAULT_MODEL)
    return args.model_copy(update=upd)


def _resolve(app: AppContext, args: TrainDasInput) -> TrainDasInput:
    if args.from_locate_run:
        args = _from_locate(app, args)
    args = args.model_copy(update={"model": args.model or DEFAULT_MODEL, "site": args.site or "resid_pre"})
    if args.task is None:
        raise ToolError("task: required (or pass from_locate_run to take the task from a locate run).")
    if args.layer is None:
        raise ToolError("layer: pass the block index of the site, or from_locate_run to use a locate run's best cell.")
    ks = args.k if isinstance(args.k, list) else [args.k]
    if not ks:
        raise ToolError("k: an empty list; pass an int or a list such as [1, 2, 4, 8].")
    if args.method == "boundless" and isinstance(args.k, list):
        raise ToolError("k: boundless DAS learns k itself; pass method='das' for a rank sweep.")
    return args


def _site(args_site: str, layer: int, head: int | None, model) -> Site:
    cfg = model.cfg
    if not 0 <= layer < cfg.n_layers:
        raise ToolError(f"layer: {layer} out of range 0..{cfg.n_layers - 1}.")
    if args_site == "z" and head is None:
        raise ToolError("head: site 'z' is one head's output; pass `head`.")
    if args_site != "z" and head is not None:
        raise ToolError(f"head: only for site 'z'; drop it or use site='z' (got site {args_site!r}).")
    if head is not None and not 0 <= head < cfg.n_heads:
        raise ToolError(f"head: {head} out of range 0..{cfg.n_heads - 1}.")
    if args_site == "mlp_out" and cfg.attn_only:
        raise ToolError("site: the model is attention-only; it has no MLP output. Use resid_pre, attn_out or z.")
    site = Site(args_site, layer, head=head)
    try:
        check_site(model, site)
    except ValueError as e:
        raise ToolError(f"site: {e}") from None
    return site


def _data_error(e: TaskSpecError) -> ToolError:
    field = {"n": "n_train", "variable": "variable", "position": "position", "source_position": "source_position",
             "counterfactual": "counterfactual"}.get(e.field, f"task.{e.field}")
    return ToolError(f"{field}: {e.message}")


def _stat(correct, seed: int) -> Stat:
    return Stat(**ci_dict(np.asarray(correct, dtype=np.float64), seed=seed))


def _das_site(site: Site, position: str, source_position: str) -> DasSite:
    return DasSite(kind=site.kind, hook=site.hook, layer=site.layer, head=site.head, position=position,
                   source_position=source_position)


# ------------------------------------------------------------------ train_das

def _work(app: AppContext, args: TrainDasInput, params: dict):
    def work(job) -> dict:
        t0 = time.time()
        spec = get_task(app, args.task)
        job.progress(0.01, f"loading {args.model}")
        lm = get_model(app, args.model)
        model = lm.model
        site = _site(args.site, args.layer, args.head, model)
        d = site.dim(model)
        ks = sorted(set(args.k)) if isinstance(args.k, list) else [args.k]
        if args.method == "das" and any(not 1 <= k <= d for k in ks):
            raise ToolError(f"k: {ks} must lie in 1..{d} (the dimension of {site}).")
        n = args.n_train + args.n_test
        test_fraction = args.n_test / n
        try:
            data = build_interchange_dataset(spec, lm.tokenizer, args.variable, n=n, seed=args.seed,
                                             position=args.position, source_position=args.source_position,
                                             test_fraction=test_fraction, counterfactual=args.counterfactual)
        except TaskSpecError as e:
            raise _data_error(e) from None
        prog = lambda f, m: job.progress(0.03 + 0.9 * f, m)
        kw = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
              "progress": prog, "should_cancel": lambda: job.cancelled}
        sweep = None
        with lm.use():
            try:
                if args.method == "boundless":
                    res = train_boundless_das(model, data, site, **kw)
                elif len(ks) > 1 or isinstance(args.k, list):
                    sweep = rank_sweep(model, data, site, ks=ks, restarts=args.restarts, **kw)
                    pick = sweep.knee_k if sweep.knee_k is not None else ks[int(np.argmax(sweep.test_iia))]
                    res = sweep.results[sweep.ks.index(pick)]
                else:
                    res = train_das(model, data, site, ks[0], restarts=args.restarts, **kw)
            except Cancelled:
                job.check_cancelled()
                raise
            except ValueError as e:
                raise ToolError(f"site: {e}") from None
        job.progress(0.95, "plots and store")
        return _store(app, args, spec, lm, data, site, res, sweep, params, t0, test_fraction)
    return work


def _store(app, args, spec, lm, data, site, res, sweep, params, t0, test_fraction) -> dict:
    run = app.store.create_run(TOOL, spec.name, args.model, params, seed=args.seed,
                               model_info={"weight_hash": lm.weight_hash, "device": lm.device}, task_hash=task_hash(spec))
    try:
        tensors = {"rotation": res.rotation.float().contiguous()}
        if sweep is not None:
            tensors |= {f"rotation.k{r.k}": r.rotation.float().contiguous() for r in sweep.results}
        if res.boundless:
            tensors["rotation_full"] = res.boundless["rotation_full"].float().contiguous()
            tensors["mask"] = torch.tensor(res.boundless["mask"], dtype=torch.float32)
        run.write_tensors("rotation.safetensors", tensors)
        train_bases, test_bases = {e.base_key for e in data.train}, {e.base_key for e in data.test}
        shared = len(train_bases & test_bases)
        ex = lambda e: {"base": e.base_key, "source": e.source_prompt, "label": e.label, "base_answer": e.base_answer}
        run.write_json("split.json", {"train_bases": sorted(train_bases), "test_bases": sorted(test_bases),
                                      "train": [ex(e) for e in data.train], "test": [ex(e) for e in data.test]})
        seed = args.seed
        test, ctrl = _stat(res.test.correct.numpy(), seed), {k: _stat(v.correct.numpy(), seed)
                                                              for k, v in res.controls.items()}
        train = _stat(res.train.correct.numpy(), seed)
        rank = None
        if sweep is not None:
            rank = RankCurve(ks=sweep.ks, test_iia=sweep.test_iia, random_iia=sweep.random_iia,
                             full_vector_iia=sweep.full_vector_iia, knee_k=sweep.knee_k, rule=sweep.rule)
        boundless = None
        if res.boundless:
            boundless = {k: v for k, v in res.boundless.items() if k not in ("rotation_full", "mask")}
        files = {k: f"artifact://{run.run_id}/{k}" for k in ("rotation.safetensors", "split.json", "result.json")}
        files.update(_plots(run, args, spec, res, test, ctrl, rank, site))
        warnings = []
        rnd, full = ctrl.get("random_rotation"), ctrl.get("full_vector")
        if rnd is not None and test.ci95[0] <= rnd.ci95[1]:
            warnings.append(f"held-out IIA {test.mean:.2f} is not above the random-rotation control "
                            f"(CI up to {rnd.ci95[1]:.2f}): no evidence that {args.variable!r} lives in a "
                            f"{res.k}-dim subspace here")
            if full is not None and full.mean < 0.5:
                warnings.append(f"full-vector patching is also low ({full.mean:.2f}): {site} at "
                                f"{args.position} probably does not carry {args.variable!r}; try another layer or "
                                f"position (locate)")
        if res.base_accuracy < 0.8:
            warnings.append(f"the model answers only {res.base_accuracy:.0%} of the test base prompts correctly; "
                            f"IIA on a task it does not solve means little (run_baseline)")
        if train.mean - test.mean > 0.15:
            warnings.append(f"train IIA {train.mean:.2f} >> held-out {test.mean:.2f}: the rotation overfits; use "
                            f"more n_train or a smaller k")
        if shared:
            warnings.append(f"{shared} base prompts are in both splits")
        if sweep is not None and sweep.knee_k is None:
            warnings.append("no k beats its random control: the rank curve has no knee")
        summary = (f"DAS k={res.k} at {site} ({args.position}) for {args.variable!r}: held-out IIA {test.mean:.2f} "
                   f"[{test.ci95[0]:.2f}, {test.ci95[1]:.2f}]")
        if rnd is not None:
            summary += f"; random rotation {rnd.mean:.2f}"
        if full is not None:
            summary += f", full vector {full.mean:.2f}"
        if rank is not None:
            summary += f"; rank sweep {rank.ks}: knee k={rank.knee_k}"
        if boundless:
            summary += f"; boundless effective k={boundless['effective_k']}"
        cost = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.cost.items()}
        cost["total_seconds"] = round(time.time() - t0, 2)
        extra = {"chosen_seed": res.extra["chosen_seed"], "restarts": res.extra["restarts"]} if res.extra else {}
        result = TrainDasResult(
            run_id=run.run_id, task=spec.name, model=args.model, variable=args.variable,
            site=_das_site(site, data.position, data.source_position), k=res.k, method=args.method,
            counterfactual=args.counterfactual, train_iia=train, test_iia=test,
            test_iia_pair=round(res.test.iia_pair, 4), controls=ctrl, base_accuracy=res.base_accuracy,
            rank_curve=rank, learning_curve=res.curve, boundless=boundless,
            n_train=len(data.train), n_test=len(data.test), n_train_bases=len(train_bases),
            n_test_bases=len(test_bases), shared_bases=shared,
            data={"n": len(data), "seed": args.seed, "test_fraction": test_fraction, "position": data.position,
                  "source_position": data.source_position, "counterfactual": args.counterfactual,
                  "require_change": data.require_change, **extra},
            summary=summary, warnings=warnings, files=files, cost=cost)
        out = result.model_dump(mode="json")
        run.finish(out, metrics={"test_iia": test.mean, "k": res.k, "site": str(site),
                                 **({"random_iia": rnd.mean} if rnd else {})})
    except BaseException as e:
        run.fail(f"{type(e).__name__}: {e}")
        raise
    return out



def _plots(run, args, spec, res, test, ctrl, rank, site) -> dict[str, str]:
    what = f"{spec.name} / {args.variable} on {args.model} at {site} ({args.position})"
    files = {}
    epochs = [c["epoch"] for c in res.curve]
    files |= save_png(run, "learning_curve.png", plots.line_plot(
        epochs, {"training loss": [c["loss"] for c in res.curve], "train IIA (running)": [c["train_iia"]
                                                                                          for c in res.curve]},
        title=f"DAS learning curve, k={res.k}\n{what}", xlabel="epoch", ylabel="loss / IIA"))
    names = ["train", "test (held out)", *ctrl]
    stats = [_stat(res.train.correct.numpy(), args.seed), test, *ctrl.values()]
    files |= save_png(run, "iia_bar.png", plots.bar_with_ci(
        names, [s.mean for s in stats], [s.ci95[0] for s in stats], [s.ci95[1] for s in stats],
        title=f"IIA, k={res.k}, vs controls\n{what}", ylabel="IIA"))
    if rank is not None:
        files |= save_png(run, "rank_curve.png", plots.line_plot(
            rank.ks, {"DAS (held out)": rank.test_iia, "random rotation": rank.random_iia},
            title=f"rank sweep (knee k={rank.knee_k})\n{what}", xlabel="k", ylabel="IIA", xscale="log",
            hlines={"full vector": rank.full_vector_iia}))
    return files


def train_das_tool(app: AppContext, args: TrainDasInput, progress: ProgressFn | None = None) -> TrainDasOutput:
    args = _resolve(app, args)
    spec = get_task(app, args.task)
    return run_heavy(app, TOOL, args, spec.name, args.model,
                     f"train_das {spec.name}/{args.variable} on {args.model} ({args.method}, {args.site} "
                     f"L{args.layer}, k={args.k})", lambda params: _work(app, args, params), TrainDasOutput, progress)


# ------------------------------------------------------------------ eval_das
