"""Tool find_features: which features (SAE latents, MLP neurons, DAS directions) carry a task variable at a
position, and do they matter causally?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from .. import lazy
from ..methods import features
from ..methods.core import Progress, Site
from ..methods.core.footprint import Footprint
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import (
    DEFAULT_MODEL,
    MaybeFloat,
    Stat,
    check_pairs,
    counterfactual_name,
    dataset,
    resolve_task,
    task_metric,
    validate_or_raise,
)
from .errors import ToolError
from .load_sae import checked_sae, sae_directory
from .probe import probe_features

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
plots = lazy("mcp_interp.artifacts.plots")

TOOL = "find_features"


class FindFeaturesInput(HeavyInput):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    task: str = Field(..., description="Task name (list_tasks).")
    variable: str = Field(..., description="The task variable (input or derived) whose value the features should "
                          "separate.")
    source: Literal["sae", "neurons", "das", "probe"] = Field(
        "sae", description="sae: latents of `sae`; neurons: MLP hidden units at `layer`; das: the directions of a "
        "train_das run; probe: the directions of a probe run at `layer` (default: its best layer).")
    sae: str | None = Field(None, description="source='sae': a train_sae / load_sae run id, or a sae-lens directory; "
                            "a transcoder (sae-lens transcoder classes, EleutherAI sparsify's layers.L.mlp folders, or "
                            "`<train_transcoders run id>/layers.L.mlp`) "
                            "works too: its latents are read at the MLP's input and written at its output.")
    layer: int | None = Field(None, ge=0, description="source='neurons': the MLP's layer; source='probe': which of "
                              "the run's layers (default: its best).")
    das_run: str | None = Field(None, description="source='das': a train_das run id.")
    probe_run: str | None = Field(None, description="source='probe': a probe run id.")
    position: str = Field("END", description="The task's named position where features are read and intervened on.")
    counterfactual: str | None = Field(None, description="Generator for the causal tests (default: one that resamples "
                                       "exactly `variable`, else the first whose pairs change it).")
    n: int = Field(64, ge=8, le=4096, description="Prompt pairs.")
    n_perm: int = Field(1000, ge=19, le=100_000, description="Label permutations for the null (at least 19, so a "
                        "p-value can reach 0.05).")
    top: int = Field(10, ge=1, le=200, description="Features to report.")
    test_top: int = Field(3, ge=0, le=50, description="Top features to test causally.")
    test_features: list[int] = Field([], description="Also test these feature indices (e.g. a suspected decoy).")
    interventions: list[Literal["zero", "mean", "patch", "steer"]] = Field(
        ["zero", "mean", "patch"], description="zero / mean (over the task's prompts) ablation, patch (the "
        "feature's value from the counterfactual prompt), steer (add steer_alpha to the feature).")
    steer_alpha: float | None = Field(None, allow_inf_nan=False, description="For 'steer' (required there): added to "
                                      "the feature's value (alpha x its decoder direction in the site); finite.")

    @model_validator(mode="after")
    def _steer_needs_alpha(self):
        if "steer" in self.interventions and self.steer_alpha is None:
            raise ValueError("steer_alpha: interventions include 'steer' but no steer_alpha was given. Fix: pass "
                             "steer_alpha (e.g. 5.0), or drop 'steer'")
        return self


class Context(BaseModel):
    """Where a feature fires strongly: the prompt, the token position there, the token and the feature's value."""
    prompt: str
    position: int
    token: str
    value: MaybeFloat = Field(description="the feature's value (null if not finite)")


class FeatureRow(BaseModel):
    feature: int
    name: str
    score: MaybeFloat = Field(description="AUROC (P(feature higher on classes[0])) or eta^2 (null if undefined)")
    ci95: list[MaybeFloat] | None = None
    strength: MaybeFloat = Field(description="|AUROC - 0.5| x 2, or eta^2: what is ranked")
    p: MaybeFloat = Field(description="rank-test p-value (Mann-Whitney U for two values, Kruskal-Wallis for more; with "
                     "more values and fewer than 5 prompts for one of them, the larger of that and p_perm)")
    p_perm: MaybeFloat = Field(description="label-permutation p-value of the ranked statistic (floor 1/(n_perm+1))")
    q: MaybeFloat = Field(description="Benjamini-Hochberg q-value of p across all features")
    mean_by_value: dict[str, MaybeFloat]
    top_contexts: list[Context] = Field(description="highest activations over the task's prompts (any position)")


class CausalRow(BaseModel):
    feature: int
    name: str
    intervention: str
    effect: MaybeFloat = Field(description="(m_clean - m_intervened) / mean(m_clean - m_cf): 1 = all the way to the "
                               "counterfactual, 0 = no effect")
    ci95: list[MaybeFloat] = Field(description="95% bootstrap interval (resampling the normaliser too); null where "
                                   "undefined")
    delta_metric: MaybeFloat = Field(description="mean change of the raw metric (null when not finite)")


class FindFeaturesResult(RunResult):
    run_id: str
    task: str
    model: str
    variable: str
    source: str
    hook: str
    position: str
    n: int
    n_features: int
    stat: str
    classes: list[str]
    n_significant: int = Field(description="features with q < 0.05")
    features: list[FeatureRow]
    counterfactual: str
    metric: str
    clean_metric: Stat
    counterfactual_metric: Stat
    identity_max_abs_diff: MaybeFloat = Field(description="max |metric change| when the features are encoded and put "
                                              "back unchanged (must be ~0: the error term is kept)")
    causal: list[CausalRow]


class FindFeaturesOutput(HeavyOutput):
    result: FindFeaturesResult | None = None


def _pick_counterfactual(spec, ds_probe, variable: str, given: str | None) -> str | None:
    if given:
        return given
    try:
        name = counterfactual_name(spec, variable, None)
        if name:
            return name
    except ToolError:
        pass
    for cf in spec.counterfactuals:
        if getattr(cf, "changes_answer", True) is False:
            continue
        return cf.name
    return None


def feature_source(app: AppContext, lm, source: str, sae: str | None = None, layer: int | None = None,
                   das_run: str | None = None, field: str = "", probe_run: str | None = None):
    """The features of one model for source 'sae' (`sae`: a run id or directory), 'neurons' (MLP `layer`), 'das'
    (`das_run`) or 'probe' (`probe_run` at `layer`, default its best), with ToolErrors naming the field (prefixed by
    `field`, e.g. "a.") and the fix."""
    model = lm.model
    if source == "sae":
        if not sae:
            raise ToolError(f"{field}sae: source='sae' needs `sae` (a train_sae / load_sae run id or a sae-lens "
                            f"directory).")
        loaded, site, _ = checked_sae(app, sae, lm)
        return loaded if isinstance(loaded, features.TranscoderFeatures) else features.SAEFeatures(loaded, site)
    if source == "neurons":
        if layer is None or not 0 <= layer < model.cfg.n_layers or model.cfg.attn_only:
            raise ToolError(f"{field}layer: source='neurons' needs the layer of an MLP (0..{model.cfg.n_layers - 1}).")
        return features.NeuronFeatures(Site("mlp_post", layer), model.cfg.d_mlp)
    if source == "probe":  # `layer`: which of the run's layers (default its best)
        return probe_features(app, lm, probe_run, layer, field)
    if not das_run:
        raise ToolError(f"{field}das_run: source='das' needs a train_das run id (list_runs(tool='train_das')).")
    try:
        rec = app.store.get_run(das_run)
        res = app.store.read_result(das_run)
        from safetensors.torch import load_file

        R = load_file(str(app.store.resolve_file(das_run, "rotation.safetensors")))["rotation"]
    except Exception as e:
        raise ToolError(f"{field}das_run: cannot read run {das_run!r} as a train_das run ({e}).") from None
    if rec.tool != "train_das":
        raise ToolError(f"{field}das_run: run {das_run} is a {rec.tool} run, not train_das.")
    s = res["site"]
    if s.get("head") is not None or s["kind"] not in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
        raise ToolError(f"{field}das_run: its site {s['kind']} (head {s.get('head')}) is not a whole-vector site; "
                        f"features are read at resid_pre / resid_post / attn_out / mlp_out.")
    if R.shape[0] != model.cfg.d_model:
        raise ToolError(f"{field}das_run: its rotation has {R.shape[0]} rows but this model's d_model is "
                        f"{model.cfg.d_model}: the run belongs to another model.")
    return features.DirectionFeatures(R, Site(s["kind"], int(s["layer"])), label="das")


def _find(run: ToolRun, args: FindFeaturesInput) -> tuple[FindFeaturesResult, dict]:
    spec = resolve_task(run.app, args.task)
    lm = run.load(args.model)
    validate_or_raise(spec, lm.tokenizer, args.model)
    source = feature_source(run.app, lm, args.source, args.sae, args.layer, args.das_run, probe_run=args.probe_run)
    refuse_oversized(Footprint(lambda n: features.ranking_footprint(n, source.n), {"n": args.n}),
                     f"ranking {source.n} features")
    ds, labels = _prompts(spec, lm, args)
    bad = [i for i in dict.fromkeys(args.test_features) if not 0 <= i < source.n]
    if bad:
        raise ToolError(f"test_features: {bad} out of range 0..{source.n - 1}.")
    with lm.use():
        study = features.find_variable_features(
            lm.model, source, [e.tokens for e in ds.examples], [e.cf_tokens for e in ds.examples],
            [e.positions[args.position] for e in ds.examples], labels, task_metric("logit_diff", ds), top=args.top,
            test_top=args.test_top, test_features=args.test_features, interventions=args.interventions,
            steer_alpha=args.steer_alpha, n_perm=args.n_perm, seed=args.seed, progress=run.span(0.0, 1.0),
            should_cancel=run.should_cancel)
    names = source.names()
    run.open(spec, args.model, lm, args.seed)
    rows = [_feature_row(f, study, names, ds, lm.tokenizer) for f in study.top]
    crow = _causal_rows(study.causal, names)
    _plots(run, args, study, names, crow, spec.name)
    run.write_tensors("features.safetensors", study.tensors())
    run.write_json("causal.json", _causal_records(study.causal))
    run.publish("result.json")
    rank, causal = study.ranking, study.causal
    result = FindFeaturesResult(
        run_id=run.run_id, task=spec.name, model=args.model, variable=args.variable, source=source.kind,
        hook=source.site.hook, position=args.position, n=len(ds), n_features=source.n, stat=rank.stat,
        classes=[str(c) for c in rank.classes], n_significant=study.n_significant, features=rows,
        counterfactual=ds.counterfactual, metric="logit_diff", clean_metric=Stat(**study.clean_metric),
        counterfactual_metric=Stat(**study.counterfactual_metric),
        identity_max_abs_diff=causal["identity_max_abs_diff"], causal=crow,
        summary=_summary(args, study, source.n, rows[0], crow), warnings=_warnings(args, causal, crow),
        files=run.files, cost=run.cost({}))
    return result, {"top_feature": rows[0].feature, "top_score": rows[0].score, "n_significant": study.n_significant}


def _prompts(spec, lm, args: FindFeaturesInput) -> tuple:
    """The task's prompt pairs for the causal tests (pairs whose counterfactual changes the answer, since they read
    a logit difference) and the variable's value on each, with ToolErrors naming the field."""
    cf_name = _pick_counterfactual(spec, None, args.variable, args.counterfactual)
    ds = dataset(spec, lm.tokenizer, args.n, args.seed, cf_name, answer_changes=True, model=lm.model,
                 model_id=args.model)
    if args.variable not in ds.examples[0].base:
        raise ToolError(f"variable: {args.variable!r} is not a variable of task {spec.name!r}; it has "
                        f"{sorted(k for k in ds.examples[0].base if not k.startswith('_'))}.")
    if args.position not in ds.position_names:
        raise ToolError(f"position: {args.position!r} is not a position of {spec.name!r}; it has {ds.position_names}.")
    check_pairs(ds, "logit_diff")
    labels = [str(e.base[args.variable]) for e in ds.examples]
    if len(set(labels)) < 2:
        raise ToolError(f"variable: {args.variable!r} takes one value on all {len(ds)} prompts; nothing to separate.")
    return ds, labels


def _feature_row(f: int, study, names: list[str], ds, tokenizer) -> FeatureRow:
    rank, ci = study.ranking, study.ranking.ci.get(f)
    contexts = [Context(prompt=ds.examples[c.seq].prompt, position=c.position, token=tokenizer.decode([c.token]),
                        value=round(c.value, 4)) for c in study.contexts[f]]
    return FeatureRow(feature=f, name=names[f], score=round(float(rank.score[f]), 4),
                      ci95=[round(ci[0], 4), round(ci[1], 4)] if ci else None,
                      strength=round(float(rank.strength[f]), 4), p=float(rank.p[f]), p_perm=float(rank.p_perm[f]),
                      q=float(rank.q[f]), mean_by_value={c: round(v, 4) for c, v in study.mean_by_value[f].items()},
                      top_contexts=contexts)


def _causal_rows(causal: dict, names: list[str]) -> list[CausalRow]:
    return [CausalRow(feature=f, name=names[f], intervention=k, effect=round(v["effect"], 4),
                      ci95=[round(x, 4) for x in v["ci95"]], delta_metric=round(v["delta_metric"], 4))
            for (f, k), v in causal["effects"].items()]


def _causal_records(causal: dict) -> dict:
    """causal.json: per "feature:intervention" the effect, its CI, the metric change and the per-example effects."""
    return {f"{f}:{k}": {**{kk: vv for kk, vv in v.items() if kk != "per_example"},
                         "per_example": np.asarray(v["per_example"]).tolist()}
            for (f, k), v in causal["effects"].items()}


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _summary(args: FindFeaturesInput, study, n_features: int, r0: FeatureRow, crow: list[CausalRow]) -> str:
    summary = (f"{study.n_significant} of {n_features} features separate {args.variable} at {args.position} "
               f"(q < 0.05); top: {r0.name} ({study.ranking.stat} {_num(r0.score, '.3f')}). ")
    defined = [c for c in crow if c.effect is not None]
    if defined:
        best = max(defined, key=lambda c: abs(c.effect))
        summary += (f"Largest causal effect: {best.name} {best.intervention} {best.effect:.2f} "
                    f"[{_num(best.ci95[0])}, {_num(best.ci95[1])}]. ")
    return summary + f"Identity check: {study.causal['identity_max_abs_diff']:.1e}. Next: " + (
        "look at the top features' histograms (hist_<feature>.png); a feature with a causal effect is a candidate "
        "for the variable's representation, to test with scrub_hypothesis or train_das at the same site" if crow else
        f"test_top > 0 tests the top features causally; try other positions than {args.position!r} too")


def _warnings(args: FindFeaturesInput, causal: dict, crow: list[CausalRow]) -> list[str]:
    warnings = []
    identity = causal["identity_max_abs_diff"]
    if not np.isfinite(identity) or identity > 1e-3:  # NaN: the features or the metric are not finite
        warnings.append(f"the identity check moved the metric by {identity:.2e}")
    if not causal["normalised"]:
        warnings.append("clean and counterfactual metrics coincide: effects are raw metric changes")
    undefined = sum(c.effect is None for c in crow)
    if undefined:
        warnings.append(f"{undefined} causal effects are undefined (null): the intervened metric was not finite (a "
                        f"steer_alpha of {args.steer_alpha:g} overflows?)" if args.steer_alpha else
                        f"{undefined} causal effects are undefined (null): a metric was not finite")
    return warnings


def _plots(run, args, study, names, crow, task) -> None:
    rank, top = study.ranking, study.top
    what = f"{task} / {args.variable} at {args.position}, {args.model}"
    lo = [rank.ci.get(f, (np.nan, np.nan))[0] for f in top]
    hi = [rank.ci.get(f, (np.nan, np.nan))[1] for f in top]
    fig = plots.bar_with_ci([names[f] for f in top], [rank.score[f] for f in top], lo, hi,
                            title=f"feature ranking ({rank.stat}, 95% bootstrap CI)\n{what}", ylabel=rank.stat,
                            ref=0.5 if rank.stat == "auroc" else 0.0)
    run.save_figure("ranking.png", fig, main=True)
    for f, series in study.by_value.items():
        fig = plots.histogram(series, title=f"{names[f]} by {args.variable}\n{what}", xlabel="feature value")
        run.save_figure(f"hist_{f}.png", fig)
    if crow:
        fig = plots.bar_with_ci([f"{c.name} {c.intervention}" for c in crow], [c.effect for c in crow],
                                [c.ci95[0] for c in crow], [c.ci95[1] for c in crow],
                                title=f"causal effects (normalised, 95% CI)\n{what}", ylabel="effect")
        run.save_figure("causal.png", fig)


def find_features(app: AppContext, args: FindFeaturesInput, progress: Progress | None = None) -> FindFeaturesOutput:
    spec = resolve_task(app, args.task)
    if args.sae:
        sae_directory(app, args.sae)  # a path is confined before the run cache could answer for it
    return run_heavy(app, TOOL, args, spec.name, args.model,
                     f"find_features {args.variable} in {spec.name} on {args.model} ({args.source})",
                     _find, FindFeaturesOutput, progress)


FIND_FEATURES = ToolSpec(
    TOOL, fn=find_features, input_model=FindFeaturesInput, output_model=FindFeaturesOutput, progress=True,
    description=(
        "Which features carry a task variable, and do they matter? Features: SAE latents (train_sae / load_sae run "
        "or a sae-lens directory), MLP neurons (layer), or the directions of a train_das run. At the task's named "
        "position, ranks every feature by how well it separates the variable's values (AUROC for two values, eta^2 "
        "for more) with bootstrap CIs, rank-test and label-permutation p-values and Benjamini-Hochberg q-values; "
        "shows top-"
        "activating contexts and histograms by value. Then tests the top features causally on clean prompts: zero "
        "or mean ablation, patching the feature's value from the counterfactual prompt, or steering; effect = (m_clean "
        "- m_intervened) / (m_clean - m_cf) with a 95% CI. Interventions keep the SAE error term, so an untouched "
        "feature leaves the model unchanged (identity_max_abs_diff reports it). Runs as a job."))
