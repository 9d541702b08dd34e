"""Tool train_das: is a task variable represented along a (low-dimensional) subspace at one site?

Distributed alignment search (methods/das) trains a d x k rotation at one site so that interchanging the
subspace between a base and a source run produces the causal model's counterfactual label. Held-out IIA is on
base prompts never seen in training (tasks/interchange.py); the random-rotation and full-vector controls run on
the same test split. eval_das (tools/eval_das.py) re-tests a saved rotation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from .. import lazy
from ..methods import das as das_methods
from ..methods.core import Progress, Site
from ..methods.core.footprint import Footprint
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import DEFAULT_MODEL, MaybeFloat, Stat, resolve_task
from .das_locate import locate_cell
from .das_site import DasSite, SiteKind, das_site_of, das_site_record, interchange_data, prompt_length
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
plots = lazy("mcp_interp.artifacts.plots")
load_file = lazy("safetensors.torch", "load_file")

TRAIN_TOOL = "train_das"


class TrainDasInput(HeavyInput):
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
                                                "soft mask over a full rotation (Boundless DAS; at least 200 steps, "
                                                "epochs raised if needed; the learned boundary is pruned to the "
                                                "smallest k keeping train IIA); `k` is ignored.")
    epochs: int = Field(10, ge=1, le=200)
    lr: float = Field(1e-2, gt=0, le=1.0)
    batch_size: int = Field(32, ge=1, le=1024)
    n_train: int = Field(128, ge=1, le=8192, description="Training examples (base prompts split from test).")
    n_test: int = Field(64, ge=1, le=4096, description="Held-out examples (no base prompt shared with training).")
    restarts: int = Field(1, ge=1, le=10, description="Train from seeds seed..seed+restarts-1; keep the lowest "
                          "final training loss (never chosen on test data).")
    counterfactual: str | None = Field(None, description="Source generator of the task (default: fresh samples of "
                                       "the causal model).")


class RankCurve(BaseModel):
    ks: list[int]
    test_iia: list[float]
    random_iia: list[float]
    full_vector_iia: float
    knee_k: int | None = Field(description="smallest k whose gain over the random control reaches 90% of the best")
    rule: str


class FullVectorBySource(BaseModel):
    n_only_variable: int = Field(description="test pairs whose source differs from the base only in the variable")
    iia_only_variable: MaybeFloat = Field(description="full-vector IIA on those (null where there are none)")
    n_other_variables_differ: int
    iia_other_variables_differ: MaybeFloat
    other_variables_that_differ: list[str]


class EpochPoint(BaseModel):
    epoch: int
    loss: MaybeFloat = Field(description="mean training loss over the epoch")
    train_iia: float = Field(description="running train IIA during the epoch")


class Pruning(BaseModel):
    rule: str
    train_iia: dict[str, float] = Field(description="k -> hard-boundary train IIA of the first k rotated coordinates")


class BoundlessInfo(BaseModel):
    boundary: MaybeFloat = Field(description="the learned boundary b (rotated coordinates; null if training diverged)")
    learned_k: int
    effective_k: int = Field(description="the pruned k the result reports")
    final_temperature: MaybeFloat
    pruning: Pruning
    evaluated_k: int


class RestartRun(BaseModel):
    seed: int
    final_train_loss: MaybeFloat
    final_train_iia: float


class DasData(BaseModel):
    n: int
    seed: int
    test_fraction: float
    position: str
    source_position: str
    counterfactual: str | None
    require_change: bool
    chosen_seed: int | None = Field(None, description="the restart kept (lowest final training loss); fixed k only")
    restarts: list[RestartRun] | None = None


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
    controls: dict[str, Stat] = Field(description="random_rotation (same k) and full_vector patching, "
                                                  "on the test split")
    full_vector_by_source: FullVectorBySource | None = Field(
        None, description="full-vector IIA on the test pairs whose source differs from the base only in the variable "
                          "vs the rest (the full vector also moves the other values a source carries)")
    base_accuracy: float = Field(description="test base prompts without intervention: argmax == base answer")
    rank_curve: RankCurve | None = None
    learning_curve: list[EpochPoint]
    boundless: BoundlessInfo | None = None
    n_train: int
    n_test: int
    n_train_bases: int
    n_test_bases: int
    shared_bases: int = Field(description="base prompts in both train and test (0: the split is clean)")
    data: DasData = Field(description="how the interchange data was built (for eval_das and reproduction)")


class TrainDasOutput(HeavyOutput):
    result: TrainDasResult | None = None


def _from_locate(app: AppContext, args: TrainDasInput) -> TrainDasInput:
    """Fill task, model, site, layer, head and position from a locate run's best cell."""
    return args.model_copy(update=locate_cell(app, args.from_locate_run, args.site, args.task, args.model))


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



# ------------------------------------------------------------------ train_das

def _train_das(run: ToolRun, args: TrainDasInput) -> tuple[TrainDasResult, dict]:
    spec = resolve_task(run.app, args.task)
    lm = run.load(args.model)
    site = das_site_of(args.site, args.layer, args.head, lm.model)
    ks = _ks(args, site, lm.model)
    n = args.n_train + args.n_test
    kw = {"seed": args.seed, "position": args.position, "source_position": args.source_position,
          "test_fraction": args.n_test / n, "counterfactual": args.counterfactual}
    seq = prompt_length(spec, lm.tokenizer, args.variable, n, **kw)
    if seq is not None:
        refuse_oversized(_train_footprint(args, lm.model, site, seq, ks),
                         f"training DAS at {site} on prompt pairs of about {seq} tokens")
    data = interchange_data(spec, lm.tokenizer, args.variable, n=n, **kw)
    with lm.use():
        try:
            study = das_methods.study_das(
                lm.model, data, site, ks, method=args.method, sweep=isinstance(args.k, list), restarts=args.restarts,
                epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, variable=args.variable,
                spec=spec, progress=run.span(), should_cancel=run.should_cancel)
        except ValueError as e:
            raise ToolError(f"site: {e}") from None
    run.progress(0.95, "plots and store")
    run.open(spec, args.model, lm, args.seed)
    run.write_tensors("rotation.safetensors", study.tensors())
    run.write_json("split.json", _split_record(study, data))
    run.publish("result.json")
    res = study.result
    train, test = Stat(**study.train_iia), Stat(**study.test_iia)
    ctrl = {name: Stat(**s) for name, s in study.controls.items()}
    rank, boundless = _rank_curve(study.sweep), _boundless(study)
    by_source = FullVectorBySource(**study.full_vector_by_source) if study.full_vector_by_source else None
    _plots(run, args, spec, res, train, test, ctrl, rank, site)
    result = TrainDasResult(
        run_id=run.run_id, task=spec.name, model=args.model, variable=args.variable,
        site=das_site_record(site, data.position, data.source_position), k=res.k, method=args.method,
        counterfactual=args.counterfactual, train_iia=train, test_iia=test,
        test_iia_pair=round(res.test.iia_pair, 4), controls=ctrl, full_vector_by_source=by_source,
        base_accuracy=res.base_accuracy, rank_curve=rank, learning_curve=[EpochPoint(**c) for c in res.curve],
        boundless=boundless, n_train=len(data.train), n_test=len(data.test), n_train_bases=len(study.train_bases),
        n_test_bases=len(study.test_bases), shared_bases=study.shared_bases, data=_data_record(args, data, res),
        summary=_train_summary(run.run_id, args, site, res.k, test, ctrl, rank, boundless),
        warnings=_train_warnings(args, site, study, train, test, ctrl, by_source), files=run.files,
        cost=run.cost(res.cost))
    rnd = ctrl.get("random_rotation")
    return result, {"test_iia": test.mean, "k": res.k, "site": str(site), **({"random_iia": rnd.mean} if rnd else {})}


def _ks(args: TrainDasInput, site: Site, model) -> list[int]:
    """The subspace dimensions to train (sorted, distinct for a sweep), each within the site's dimension."""
    d = site.dim(model)
    ks = sorted(set(args.k)) if isinstance(args.k, list) else [args.k]
    if args.method == "das" and any(not 1 <= k <= d for k in ks):
        raise ToolError(f"k: {ks} must lie in 1..{d} (the dimension of {site}).")
    return ks



def _train_footprint(args: TrainDasInput, model, site: Site, seq: int, ks: list[int]) -> Footprint:
    """Peak memory of training as a function of the arguments a request can oversize (n_train, n_test,
    batch_size); boundless DAS trains a full d x d rotation."""
    k = site.dim(model) if args.method == "boundless" else max(ks)
    cfg = model.cfg
    return Footprint(lambda n_train, n_test, batch_size: das_methods.das_footprint(cfg, site, n_train, n_test, seq, k,
                                                                                  batch_size),
                     {"n_train": args.n_train, "n_test": args.n_test, "batch_size": args.batch_size})


def _split_record(study, data) -> dict:
    """split.json: the base prompts of each split and every example's source, label and base answer."""
    ex = lambda e: {"base": e.base_key, "source": e.source_prompt, "label": e.label, "base_answer": e.base_answer}
    return {"train_bases": study.train_bases, "test_bases": study.test_bases,
            "train": [ex(e) for e in data.train], "test": [ex(e) for e in data.test]}


def _rank_curve(sweep) -> RankCurve | None:
    if sweep is None:
        return None
    return RankCurve(ks=sweep.ks, test_iia=sweep.test_iia, random_iia=sweep.random_iia,
                     full_vector_iia=sweep.full_vector_iia, knee_k=sweep.knee_k, rule=sweep.rule)


def _boundless(study) -> BoundlessInfo | None:
    info = study.boundless_info()
    return BoundlessInfo(**info) if info else None


def _data_record(args: TrainDasInput, data, res) -> DasData:
    """How the interchange data was built, with the chosen restart (what eval_das rebuilds the data from)."""
    extra = {"chosen_seed": res.extra["chosen_seed"], "restarts": res.extra["restarts"]} if res.extra else {}
    return DasData(n=len(data), seed=args.seed, test_fraction=args.n_test / (args.n_train + args.n_test),
                   position=data.position, source_position=data.source_position, counterfactual=args.counterfactual,
                   require_change=data.require_change, **extra)


def _train_warnings(args: TrainDasInput, site: Site, study, train: Stat, test: Stat, ctrl: dict[str, Stat],
                    by_source: FullVectorBySource | None) -> list[str]:
    res, warnings = study.result, []
    rnd, full = ctrl.get("random_rotation"), ctrl.get("full_vector")
    if rnd is not None and test.ci95[0] <= rnd.ci95[1]:
        warnings.append(f"held-out IIA {test.mean:.2f} is not above the random-rotation control "
                        f"(CI up to {rnd.ci95[1]:.2f}): no evidence that {args.variable!r} lives in a "
                        f"{res.k}-dim subspace here")
        if full is not None and full.mean < 0.5:
            warnings.append(f"full-vector patching is also low ({full.mean:.2f}): {site} at "
                            f"{args.position} probably does not carry {args.variable!r}; try another layer or "
                            f"position (locate)")
    if rnd is not None and args.restarts == 1 and train.mean is not None and rnd.mean is not None \
            and train.mean <= rnd.mean + 0.1:
        # A rotation that does not even fit its training pairs may have started near-orthogonal to the variable's
        # direction and stalled (seen on toy/planted-direction, seed 0): a restart tells that from "no subspace".
        warnings.append(f"training did not fit its own pairs (train IIA {train.mean:.2f}, random rotation "
                        f"{rnd.mean:.2f}): possibly an optimisation stall from the initial rotation rather than "
                        f"the absence of a subspace; rerun with restarts=3 before concluding")
    if full is not None and by_source is not None and full.mean < test.mean - 0.1:
        warnings.append(_full_vector_warning(args.variable, res.k, test.mean, full.mean, by_source))
    if res.base_accuracy < 0.8:
        warnings.append(f"the model answers only {res.base_accuracy:.0%} of the test base prompts correctly; "
                        f"IIA on a task it does not solve means little (run_baseline)")
    if train.mean - test.mean > 0.15:
        warnings.append(f"train IIA {train.mean:.2f} >> held-out {test.mean:.2f}: the rotation overfits; use "
                        f"more n_train or a smaller k")
    if study.shared_bases:
        warnings.append(f"{study.shared_bases} base prompts are in both splits")
    if study.sweep is not None and study.sweep.knee_k is None:
        warnings.append("no k beats its random control: the rank curve has no knee")
    return warnings


def _train_summary(run_id: str, args: TrainDasInput, site: Site, k: int, test: Stat, ctrl: dict[str, Stat],
                   rank: RankCurve | None, boundless: BoundlessInfo | None) -> str:
    rnd, full = ctrl.get("random_rotation"), ctrl.get("full_vector")
    summary = (f"DAS k={k} at {site} ({args.position}) for {args.variable!r}: held-out IIA {test.mean:.2f} "
               f"[{test.ci95[0]:.2f}, {test.ci95[1]:.2f}]")
    if rnd is not None:
        summary += f"; random rotation {rnd.mean:.2f}"
    if full is not None:
        summary += f", full vector {full.mean:.2f}"
    if rank is not None:
        summary += f"; rank sweep {rank.ks}: knee k={rank.knee_k}"
    if boundless:
        summary += f"; boundless effective k={boundless.effective_k}"
    if rnd is None or test.ci95[0] > rnd.ci95[1]:
        summary += (f". Next: eval_das(run_id='{run_id}') with another counterfactual or task checks that the "
                    f"subspace carries {args.variable!r} beyond this data")
    else:
        summary += (". Next: held-out IIA does not beat a random rotation here: try another site or layer "
                    "(locate's best cells) or a larger k")
    return summary


def _full_vector_warning(variable: str, k: int, subspace: float, full: float, by: FullVectorBySource) -> str:
    """Why full-vector patching can transfer less than a k-dim subspace, with the breakdown's numbers."""
    head = f"full-vector patching ({full:.2f}) transfers less than the k={k} subspace ({subspace:.2f}): "
    only, rest = by.iia_only_variable, by.iia_other_variables_differ
    if not by.n_other_variables_differ:
        return head + (f"every held-out source differs from the base only in {variable!r} (among the variables the "
                       f"answer depends on), so other values the whole vector carries do not explain it here; the "
                       f"rest of the vector at this site moves the answer itself")
    n = by.n_only_variable + by.n_other_variables_differ
    return head + (f"the whole vector also carries the source's other values at this site, and in "
                   f"{by.n_other_variables_differ} of {n} test pairs the source differs from the base in "
                   f"{', '.join(by.other_variables_that_differ)} too, which the label keeps at the base's values "
                   f"(full-vector IIA there {rest:.2f}"
                   + (f"; {only:.2f} on the {by.n_only_variable} pairs that differ only in {variable!r}"
                      if only is not None else "")
                   + f"). A subspace that isolates {variable!r} can beat it; counterfactual= a generator that "
                     f"resamples only {variable!r} makes the two comparable")


def _plots(run: ToolRun, args, spec, res, train, test, ctrl, rank, site) -> None:
    what = f"{spec.name} / {args.variable} on {args.model}\nat {site} ({args.position})"  # two lines: fits the width
    epochs = [c["epoch"] for c in res.curve]
    run.save_figure("learning_curve.png", plots.line_plot(
        epochs, {"training loss": [c["loss"] for c in res.curve], "train IIA (running)": [c["train_iia"]
                                                                                          for c in res.curve]},
        title=f"DAS learning curve, k={res.k}\n{what}", xlabel="epoch", ylabel="loss / IIA"))
    names = ["train", "test (held out)", *ctrl]
    stats = [train, test, *ctrl.values()]
    run.save_figure("iia_bar.png", plots.bar_with_ci(
        names, [s.mean for s in stats], [s.ci95[0] for s in stats], [s.ci95[1] for s in stats],
        title=f"IIA, k={res.k}, vs controls\n{what}", ylabel="IIA"), main=True)
    if rank is not None:
        run.save_figure("rank_curve.png", plots.line_plot(
            rank.ks, {"DAS (held out)": rank.test_iia, "random rotation": rank.random_iia},
            title=f"rank sweep (knee k={rank.knee_k})\n{what}", xlabel="k", ylabel="IIA", xscale="log",
            hlines={"full vector": rank.full_vector_iia}))


def train_das(app: AppContext, args: TrainDasInput, progress: Progress | None = None) -> TrainDasOutput:
    args = _resolve(app, args)
    spec = resolve_task(app, args.task)
    return run_heavy(app, TRAIN_TOOL, args, spec.name, args.model,
                     f"train_das {spec.name}/{args.variable} on {args.model} ({args.method}, {args.site} "
                     f"L{args.layer}, k={args.k})", _train_das, TrainDasOutput, progress)


TRAIN_DAS = ToolSpec(
    TRAIN_TOOL, fn=train_das, input_model=TrainDasInput, output_model=TrainDasOutput, progress=True, description=(
        "Is a task variable represented along a subspace of one site? Distributed alignment search (DAS): trains "
        "a d x k rotation (model frozen) at one site (resid_pre/resid_post/attn_out/mlp_out at `layer`, or z of "
        "one head) and named position so that interchanging that subspace from a source prompt makes the model "
        "output the causal model's counterfactual label. Reports train and held-out IIA (no base prompt shared "
        "between splits: shared_bases = 0) with 95% bootstrap CIs, and controls on the same test split: a random "
        "rotation of the same k and full-vector patching. k as a list runs a rank sweep (IIA vs k, knee); "
        "method='boundless' learns k. from_locate_run takes site, layer, head and position from a locate run's "
        "best cell. Stores rotation.safetensors, split.json (train/test base prompts), learning-curve, rank-curve "
        "and IIA-vs-controls plots. Runs as a job; identical requests return the stored run."))

