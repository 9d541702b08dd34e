"""Tool probe: is a task variable linearly decodable at a site, layer by layer, and more than a control task?

Linear probes (scikit-learn logistic regression) per layer on a split sharing no base prompt, held-out accuracy with
95% CIs beside the majority class and a control task (Hewitt & Liang 2019); the probe directions are stored so that
find_features, compare_features and steer read them as a feature source (`probe_features`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from .. import lazy
from ..methods.core import Progress, Site
from ..methods.core.footprint import Footprint
from ..tasks.causal import TEMPLATE, CausalModel
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import DEFAULT_MODEL, MaybeFloat, Stat, check_fits_model, dataset, resolve_task, validate_or_raise
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
plots = lazy("mcp_interp.artifacts.plots")
train_probes, probe_footprint = lazy("mcp_interp.methods.probes", "train_probes", "probe_footprint")
DirectionFeatures = lazy("mcp_interp.methods.features", "DirectionFeatures")
load_file = lazy("safetensors.torch", "load_file")

TOOL = "probe"
SCALING = ("centred on the train mean and divided by one scalar (the train RMS over all coordinates), not "
           "standardised per coordinate: the residual geometry is kept, so the weights are a residual direction")


class ProbeInput(HeavyInput):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    task: str = Field(..., description="Task name (list_tasks).")
    variable: str = Field(..., description="The task variable (input or derived, get_task) whose value is the label.")
    layers: list[int] | None = Field(None, min_length=1, max_length=128, description="Layers to probe (default: "
                                     "all).")
    position: str = Field("END", description="The task's named position whose activation is read.")
    site: Literal["resid_pre", "resid_post", "attn_out", "mlp_out"] = Field(
        "resid_pre", description="Which whole-vector activation (all in the residual basis).")
    n: int = Field(256, ge=8, le=4096, description="Task prompts (split into train and test by base prompt).")
    test_fraction: float = Field(0.25, ge=0.1, le=0.5, description="Share of prompts held out for testing.")


class LayerRow(BaseModel):
    layer: int
    hook: str
    accuracy: Stat = Field(description="held-out accuracy (95% bootstrap CI over test prompts)")
    control_accuracy: Stat = Field(description="the same probe trained on the control task's labels")
    selectivity: Stat = Field(description="accuracy - control accuracy, paired per test prompt")
    train_accuracy: float
    C: float = Field(description="inverse L2 strength chosen by the inner CV")
    control_C: float
    separation: list[MaybeFloat] = Field(description="per direction: mean projection on its class minus on the "
                                         "others (train split): the activation's scale along it, for steer's alphas")


class ProbeResult(RunResult):
    run_id: str
    task: str
    model: str
    variable: str
    site: str
    position: str
    n: int
    n_train: int
    n_test: int
    shared_bases: int = Field(description="base prompts in both splits (0: the split is clean)")
    classes: list[str]
    direction_classes: list[str] = Field(description="the class each stored direction points towards (binary: one "
                                         "direction, towards classes[1])")
    majority_class: str
    majority: Stat = Field(description="accuracy of always answering the train split's most frequent value")
    control_keys: list[str] = Field(description="the input variables whose values get random control labels")
    control_map: dict[str, str]
    layers: list[LayerRow]
    best_layer: int
    best_hook: str
    c_chosen_by: str
    scaling: str


class ProbeOutput(HeavyOutput):
    result: ProbeResult | None = None


def _probe(run: ToolRun, args: ProbeInput) -> tuple[ProbeResult, dict]:
    spec = resolve_task(run.app, args.task)
    lm = run.load(args.model)
    validate_or_raise(spec, lm.tokenizer, args.model)
    cfg = lm.model.cfg
    layers = _layers(args.layers, cfg.n_layers)
    if args.site == "mlp_out" and cfg.attn_only:
        raise ToolError("site: the model is attention-only; it has no MLP output. Use resid_pre, resid_post or "
                        "attn_out.")
    refuse_oversized(Footprint(lambda n: probe_footprint(n, len(layers), cfg.d_model), {"n": args.n}),
                     f"probing {len(layers)} layers of width {cfg.d_model}")
    ds, labels, key_names, keys = _examples(spec, lm, args)
    with lm.use():
        try:
            study = train_probes(lm.model, [e.tokens for e in ds.examples],
                                 [e.positions[args.position] for e in ds.examples], labels,
                                 [e.prompt for e in ds.examples], keys, layers, args.site,
                                 test_fraction=args.test_fraction, seed=args.seed, progress=run.span())
        except ValueError as e:
            field = "n" if "base prompt" in str(e) else "variable"
            raise ToolError(f"{field}: {e}. Fix: {'raise n' if field == 'n' else 'another variable, or raise n'}.") \
                from None
    run.open(spec, args.model, lm, args.seed)
    rows = [_row(p, args.site) for p in study.layers]
    best = study.best
    record = {"site": args.site, "position": args.position, "variable": args.variable, "classes": study.classes,
              "direction_classes": study.direction_classes, "best_layer": best.layer,
              "layers": {str(r.layer): r.model_dump(mode="json") for r in rows}}
    run.write_tensors("directions.safetensors", study.tensors())
    run.write_json("probe.json", record)
    run.write_json("split.json", {"train": [ds.examples[i].prompt for i in study.train_idx],
                                  "test": [ds.examples[i].prompt for i in study.test_idx]})
    _figure(run, args, rows, study, spec.name)
    run.publish("result.json")
    result = ProbeResult(
        run_id=run.run_id, task=spec.name, model=args.model, variable=args.variable, site=args.site,
        position=args.position, n=len(ds), n_train=len(study.train_idx), n_test=len(study.test_idx),
        shared_bases=study.shared_bases, classes=study.classes, direction_classes=study.direction_classes,
        majority_class=study.majority_class, majority=Stat(**study.majority), control_keys=key_names,
        control_map=study.control_map, layers=rows, best_layer=best.layer, best_hook=Site(args.site, best.layer).hook,
        c_chosen_by=study.c_chosen_by, scaling=SCALING, summary=_summary(run.run_id, args, rows, study),
        warnings=_warnings(study, rows), files=run.files,
        cost=run.cost({"forwards": study.forwards, **{f"{k}_seconds": v for k, v in study.seconds.items()}}))
    b = rows[[r.layer for r in rows].index(best.layer)]
    return result, {"best_layer": best.layer, "accuracy": b.accuracy.mean, "selectivity": b.selectivity.mean}


def _layers(layers: list[int] | None, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad:
        raise ToolError(f"layers: {bad} out of range; this model has layers 0..{n_layers - 1}. Fix: layers in that "
                        f"range (or leave `layers` out for all).")
    return sorted(set(layers))


def _examples(spec, lm, args: ProbeInput) -> tuple:
    """The task's prompts, the variable's value on each, and the control task's keys: the values of the input
    variables the variable is computed from (itself for an input variable)."""
    ds = dataset(spec, lm.tokenizer, args.n, args.seed, None)
    check_fits_model([e.tokens for e in ds.examples], spec.name, lm.model, args.model)
    if ds.unresolved.get(args.position):
        raise ToolError(f"position: {args.position!r} does not occur in {len(ds.unresolved[args.position])} prompts. "
                        f"Fix: another position.")
    labels = [str(e.base[args.variable]) for e in ds.examples]
    if len(set(labels)) < 2:
        raise ToolError(f"variable: {args.variable!r} takes one value ({labels[0]!r}) on all {len(ds)} prompts; "
                        f"nothing to decode. Fix: another variable, or raise n.")
    model = CausalModel(spec)
    inputs = set(model.inputs) | {TEMPLATE}
    names = ([args.variable] if args.variable in inputs else
             sorted(model.ancestors([args.variable]) & inputs) or [args.variable])
    keys = [",".join(f"{k}={e.base.get(k)}" for k in names) for e in ds.examples]
    return ds, labels, names, keys


def _row(p, site: str) -> LayerRow:
    return LayerRow(layer=p.layer, hook=Site(site, p.layer).hook, accuracy=Stat(**p.accuracy),
                    control_accuracy=Stat(**p.control_accuracy), selectivity=Stat(**p.selectivity),
                    train_accuracy=round(p.train_accuracy, 4), C=p.C, control_C=p.control_C,
                    separation=[round(float(s), 4) for s in p.separation])


def _fmt(s: Stat) -> str:
    return f"{s.mean:.2f} [{s.ci95[0]:.2f}, {s.ci95[1]:.2f}]"


def _summary(run_id: str, args: ProbeInput, rows: list[LayerRow], study) -> str:
    b = next(r for r in rows if r.layer == study.best.layer)
    alpha = round(2 * max(abs(b.separation[0] or 0.0), 1e-3), 3)
    return (f"{args.variable} at {args.position} is best decoded at layer {b.layer} ({b.hook}): held-out accuracy "
            f"{_fmt(b.accuracy)} vs control task {_fmt(b.control_accuracy)} (selectivity {_fmt(b.selectivity)}) and "
            f"majority class {study.majority['mean']:.2f}, on {len(study.test_idx)} test prompts sharing no base "
            f"prompt with training. Next: steer(model='{args.model}', task='{args.task}', "
            f"intervention={{'kind': 'feature', 'source': 'probe', 'probe_run': '{run_id}', 'layer': {b.layer}, "
            f"'index': 0}}, positions=['{args.position}'], alphas=[-{alpha}, 0, {alpha}]) to test whether the model "
            f"uses this direction where it was read: decodable is not the same as used.")


def _warnings(study, rows: list[LayerRow]) -> list[str]:
    out = []
    if study.unseen:
        shown = ", ".join(map(repr, study.unseen[:8])) + (", ..." if len(study.unseen) > 8 else "")
        out.append(f"{len(study.unseen)} value(s) of the variable ({shown}) occur only in the test split; their "
                   f"{study.unseen_prompts} test prompt(s) are left out (a probe cannot predict a value it never saw): "
                   f"raise n to keep them")
    if study.control_is_relabel:
        out.append("each value of the variable comes from one input value, so the control labels are a function "
                   "of the variable: a probe that reads it scores as well on the control, and selectivity near 0 "
                   "says nothing here")
    lo = [r.layer for r in rows if r.accuracy.ci95[0] is not None and r.accuracy.ci95[0] <= study.majority["mean"]]
    if len(lo) == len(rows):
        out.append("no layer's accuracy CI clears the majority-class baseline: the variable is not linearly "
                   "decodable here (or n is too small)")
    if "fixed" in study.c_chosen_by:
        out.append(f"too few train base prompts per value for an inner CV: {study.c_chosen_by}")
    if study.layers and study.best.accuracy["n"] < 20:
        out.append(f"only {study.best.accuracy['n']} test prompts: the CIs are wide; raise n")
    return out


def _figure(run: ToolRun, args: ProbeInput, rows: list[LayerRow], study, task: str) -> None:
    x = [r.layer for r in rows]
    fig = plots.line_plot(
        x, {"probe": [r.accuracy.mean for r in rows], "control task": [r.control_accuracy.mean for r in rows]},
        ci={"probe": ([r.accuracy.ci95[0] for r in rows], [r.accuracy.ci95[1] for r in rows]),
            "control task": ([r.control_accuracy.ci95[0] for r in rows], [r.control_accuracy.ci95[1] for r in rows])},
        hlines={f"majority class {study.majority['mean']:.2f}": study.majority["mean"]},
        title=f"linear probe for {args.variable} at {args.position} ({args.site}), {task} on {args.model}\n"
              f"held-out accuracy, 95% CI (n_test={len(study.test_idx)})", xlabel="layer", ylabel="accuracy")
    run.save_figure("accuracy_by_layer.png", fig, main=True)


def probe_features(app: AppContext, lm, probe_run: str | None, layer: int | None, field: str = ""):
    """The directions of a probe run at one of its layers (default: its best) as a feature source, with ToolErrors
    naming the field (prefixed by `field`) and the fix."""
    if not probe_run:
        raise ToolError(f"{field}probe_run: source='probe' needs a probe run id (list_runs(tool='probe')).")
    try:
        rec = app.store.get_run(probe_run)
        if rec.tool != TOOL:
            raise ToolError(f"{field}probe_run: run {probe_run} is a {rec.tool} run, not probe. Fix: a probe run id "
                            f"(list_runs(tool='probe')).")
        meta = json.loads(app.store.resolve_file(probe_run, "probe.json").read_text("utf-8"))
        tensors = load_file(str(app.store.resolve_file(probe_run, "directions.safetensors")))
    except ToolError:
        raise
    except Exception as e:
        raise ToolError(f"{field}probe_run: cannot read run {probe_run!r} as a probe run ({e}).") from None
    if rec.model != lm.model_id:  # models of one width share no residual basis (a toy and its decoy variant)
        raise ToolError(f"{field}probe_run: run {probe_run} probed {rec.model}, not {lm.model_id}: its directions "
                        f"belong to that model's residual stream. Fix: probe this model first.")
    layer = int(meta["best_layer"]) if layer is None else layer
    if f"layer{layer}" not in tensors:
        raise ToolError(f"{field}layer: probe run {probe_run} has no probe at layer {layer}; it probed layers "
                        f"{sorted(int(k) for k in meta['layers'])}. Fix: one of those, or leave it out for the best.")
    return DirectionFeatures(tensors[f"layer{layer}"], Site(meta["site"], layer), label="probe")


def probe(app: AppContext, args: ProbeInput, progress: Progress | None = None) -> ProbeOutput:
    spec = resolve_task(app, args.task)  # fail fast on an unknown task, variable or position, before a job exists
    known = [*spec.variables, *spec.mechanisms]
    if args.variable not in known:
        raise ToolError(f"variable: {args.variable!r} is not a variable of task {spec.name!r}; it has {known}.")
    if args.position not in spec.position_names():
        raise ToolError(f"position: {args.position!r} is not a position of {spec.name!r}; it has "
                        f"{spec.position_names()}.")
    return run_heavy(app, TOOL, args, spec.name, args.model,
                     f"probe {args.variable} in {spec.name} on {args.model} ({args.site})", _probe, ProbeOutput,
                     progress)


PROBE = ToolSpec(
    TOOL, fn=probe, input_model=ProbeInput, output_model=ProbeOutput, progress=True,
    description=(
        "Is a task variable linearly decodable, layer by layer? Trains a linear probe (scikit-learn logistic "
        "regression, multinomial for more than two values, C by an inner cross-validation) on the activation at a "
        "named position, per layer, on a train/test split that shares no base prompt; reports held-out accuracy "
        "with 95% bootstrap CIs beside the majority-class baseline and a control task (Hewitt & Liang 2019: each "
        "input value gets a random label; selectivity = accuracy - control accuracy). Stores the probe directions "
        "(directions.safetensors, probe.json): find_features(source='probe'), compare_features and steer read "
        "them. Decodable is not used: steer along the direction to test that. Runs as a job."))
