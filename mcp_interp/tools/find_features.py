"""Tool find_features: which features (SAE latents, MLP neurons, DAS directions) carry a task variable at a
position, and do they matter causally?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from .. import lazy
from ..methods import features as F
from ..methods.core import Progress, Site, ci_dict
from ..methods.core.footprint import Footprint
from .base import FORCE_FIELD, PLOT_FIELD, WAIT_FIELD, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import (
    DEFAULT_MODEL,
    MaybeFloat,
    Seed,
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

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
torch = lazy("torch")
plots = lazy("mcp_interp.artifacts.plots")

TOOL = "find_features"


class FindFeaturesInput(BaseModel):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    task: str = Field(..., description="Task name (list_tasks).")
    variable: str = Field(..., description="The task variable (input or derived) whose value the features should "
                          "separate.")
    source: Literal["sae", "neurons", "das"] = Field("sae", description="sae: latents of `sae`; neurons: MLP hidden "
                                                     "units at `layer`; das: the directions of a train_das run.")
    sae: str | None = Field(None, description="source='sae': a train_sae / load_sae run id, or a sae-lens directory; "
                            "a transcoder (sae-lens transcoder classes, or EleutherAI sparsify's layers.L.mlp folders) "
                            "works too: its latents are read at the MLP's input and written at its output.")
    layer: int | None = Field(None, ge=0, description="source='neurons': the MLP's layer.")
    das_run: str | None = Field(None, description="source='das': a train_das run id.")
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
    seed: Seed = 0

    @model_validator(mode="after")
    def _steer_needs_alpha(self):
        if "steer" in self.interventions and self.steer_alpha is None:
            raise ValueError("steer_alpha: interventions include 'steer' but no steer_alpha was given. Fix: pass "
                             "steer_alpha (e.g. 5.0), or drop 'steer'")
        return self
    force: bool = FORCE_FIELD
    wait_seconds: float = WAIT_FIELD
    include_plot: bool = PLOT_FIELD


class FeatureRow(BaseModel):
    feature: int
    name: str
    score: float = Field(description="AUROC (P(feature higher on classes[0])) or eta^2")
    ci95: list[float] | None = None
    strength: float = Field(description="|AUROC - 0.5| x 2, or eta^2: what is ranked")
    p: float = Field(description="rank-test p-value (Mann-Whitney U for two values, Kruskal-Wallis for more; with "
                     "more values and fewer than 5 prompts for one of them, the larger of that and p_perm)")
    p_perm: float = Field(description="label-permutation p-value of the ranked statistic (floor 1/(n_perm+1))")
    q: float = Field(description="Benjamini-Hochberg q-value of p across all features")
    mean_by_value: dict[str, float]
    top_contexts: list[dict] = Field(description="highest activations over the task's prompts (any position)")


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
    identity_max_abs_diff: float = Field(description="max |metric change| when the features are encoded and put back "
                                         "unchanged (must be ~0: the error term is kept)")
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
                   das_run: str | None = None, field: str = ""):
    """The features of one model for source 'sae' (`sae`: a run id or directory), 'neurons' (MLP `layer`) or 'das'
    (`das_run`), with ToolErrors naming the field (prefixed by `field`, e.g. "a.") and the fix."""
    model = lm.model
    if source == "sae":
        if not sae:
            raise ToolError(f"{field}sae: source='sae' needs `sae` (a train_sae / load_sae run id or a sae-lens "
                            f"directory).")
        loaded, site, _ = checked_sae(app, sae, lm)
        return loaded if isinstance(loaded, F.TranscoderFeatures) else F.SAEFeatures(loaded, site)
    if source == "neurons":
        if layer is None or not 0 <= layer < model.cfg.n_layers or model.cfg.attn_only:
            raise ToolError(f"{field}layer: source='neurons' needs the layer of an MLP (0..{model.cfg.n_layers - 1}).")
        return F.NeuronFeatures(Site("mlp_post", layer), model.cfg.d_mlp)
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
    return F.DirectionFeatures(R, Site(s["kind"], int(s["layer"])), label="das")


def _find(run: ToolRun, args: FindFeaturesInput) -> tuple[FindFeaturesResult, dict]:
    spec = resolve_task(run.app, args.task)
    lm = run.load(args.model)
    model = lm.model
    validate_or_raise(spec, lm.tokenizer, args.model)
    source = feature_source(run.app, lm, args.source, args.sae, args.layer, args.das_run)
    refuse_oversized(Footprint(lambda n: F.ranking_footprint(n, source.n), {"n": args.n}),
                     f"ranking {source.n} features")
    cf_name = _pick_counterfactual(spec, None, args.variable, args.counterfactual)
    # the causal tests read a logit difference: pairs whose counterfactual changes the answer
    ds = dataset(spec, lm.tokenizer, args.n, args.seed, cf_name, answer_changes=True, model=model, model_id=args.model)
    if args.variable not in ds.examples[0].base:
        raise ToolError(f"variable: {args.variable!r} is not a variable of task {spec.name!r}; it has "
                        f"{sorted(k for k in ds.examples[0].base if not k.startswith('_'))}.")
    if args.position not in ds.position_names:
        raise ToolError(f"position: {args.position!r} is not a position of {spec.name!r}; it has {ds.position_names}.")
    check_pairs(ds, "logit_diff")
    labels = [str(e.base[args.variable]) for e in ds.examples]
    if len(set(labels)) < 2:
        raise ToolError(f"variable: {args.variable!r} takes one value on all {len(ds)} prompts; nothing to separate.")
    clean = [e.tokens for e in ds.examples]
    cf = [e.cf_tokens for e in ds.examples]
    pos = [e.positions[args.position] for e in ds.examples]
    with lm.use(), F.reading(model, [source.site]):
        run.progress(0.05, "feature values")
        vals = F.feature_values(model, source, clean, pos)
        cf_vals = F.feature_values(model, source, cf, pos)
        run.check_cancelled()
        run.progress(0.15, "ranking with permutation null")
        rank = F.rank_features(vals.numpy(), labels, n_perm=args.n_perm, top=max(args.top, args.test_top),
                               seed=args.seed, should_cancel=run.should_cancel)
        top = [int(i) for i in rank.order[: args.top]]
        tested = list(dict.fromkeys([int(i) for i in rank.order[: args.test_top]] + list(args.test_features)))
        bad = [i for i in tested if not 0 <= i < source.n]
        if bad:
            raise ToolError(f"test_features: {bad} out of range 0..{source.n - 1}.")
        # top-activating contexts over every position of the task's prompts
        acts = F.collect_activations(model, source.site, clean, should_cancel=run.should_cancel)
        all_vals = source.encode(acts.acts)
        pair = F.CausalPair(clean, cf, pos, pos, task_metric("logit_diff", ds))
        means = torch.cat([vals, cf_vals]).mean(0)
        causal = F.causal_effects(model, source, pair, tested, args.interventions, mean_values=means,
                                  cf_values=cf_vals, steer_alpha=args.steer_alpha, seed=args.seed,
                                  progress=run.span(0.3, 0.9), should_cancel=run.should_cancel)
    names = source.names()
    run.open(spec, args.model, lm, args.seed)
    rows = []
    for f in top:
        col = all_vals[:, f]
        k = min(5, len(col))
        best = torch.topk(col, k).indices.tolist()
        ctx = []
        for r in best:
            s, p = int(acts.seq[r]), int(acts.pos[r])
            toks = clean[s]
            ctx.append({"prompt": ds.examples[s].prompt, "position": p,
                        "token": lm.tokenizer.decode([toks[p]]), "value": round(float(col[r]), 4)})
        by = {c: round(float(vals[[i for i, l in enumerate(labels) if l == c], f].mean()), 4) for c in rank.classes}
        ci = rank.ci.get(f)
        rows.append(FeatureRow(feature=f, name=names[f], score=round(float(rank.score[f]), 4),
                               ci95=[round(ci[0], 4), round(ci[1], 4)] if ci else None,
                               strength=round(float(rank.strength[f]), 4), p=float(rank.p[f]),
                               p_perm=float(rank.p_perm[f]), q=float(rank.q[f]),
                               mean_by_value=by, top_contexts=ctx))
    crow = [CausalRow(feature=f, name=names[f], intervention=k, effect=round(v["effect"], 4),
                      ci95=[round(x, 4) for x in v["ci95"]], delta_metric=round(v["delta_metric"], 4))
            for (f, k), v in causal["effects"].items()]
    _plots(run, args, rank, top, vals, labels, names, crow, spec.name)
    run.write_tensors("features.safetensors", {"values.clean": vals, "values.counterfactual": cf_vals,
                                               "score": torch.as_tensor(rank.score), "p": torch.as_tensor(rank.p),
                                               "q": torch.as_tensor(rank.q),
                                               "p_perm": torch.as_tensor(rank.p_perm)})
    run.write_json("causal.json", {f"{f}:{k}": {**{kk: vv for kk, vv in v.items() if kk != "per_example"},
                                                "per_example": np.asarray(v["per_example"]).tolist()}
                                   for (f, k), v in causal["effects"].items()})
    run.publish("result.json")
    warnings = []
    if causal["identity_max_abs_diff"] > 1e-3:
        warnings.append(f"the identity check moved the metric by {causal['identity_max_abs_diff']:.2e}")
    if not causal["normalised"]:
        warnings.append("clean and counterfactual metrics coincide: effects are raw metric changes")
    n_sig = int((rank.q < 0.05).sum())
    r0 = rows[0]
    summary = (f"{n_sig} of {source.n} features separate {args.variable} at {args.position} (q < 0.05); top: "
               f"{r0.name} ({rank.stat} {r0.score:.3f}). ")
    defined = [c for c in crow if c.effect is not None]
    if len(defined) < len(crow):
        warnings.append(f"{len(crow) - len(defined)} causal effects are undefined (null): the intervened metric was "
                        f"not finite (a steer_alpha of {args.steer_alpha:g} overflows?)" if args.steer_alpha else
                        f"{len(crow) - len(defined)} causal effects are undefined (null): a metric was not finite")
    if defined:
        best = max(defined, key=lambda c: abs(c.effect))
        summary += (f"Largest causal effect: {best.name} {best.intervention} {best.effect:.2f} "
                    f"[{best.ci95[0]:.2f}, {best.ci95[1]:.2f}]. ")
    summary += f"Identity check: {causal['identity_max_abs_diff']:.1e}. Next: " + (
        "look at the top features' histograms (hist_<feature>.png); a feature with a causal effect is a candidate "
        "for the variable's representation, to test with scrub_hypothesis or train_das at the same site" if crow else
        f"test_top > 0 tests the top features causally; try other positions than {args.position!r} too")
    result = FindFeaturesResult(
        run_id=run.run_id, task=spec.name, model=args.model, variable=args.variable, source=source.kind,
        hook=source.site.hook, position=args.position, n=len(ds), n_features=source.n, stat=rank.stat,
        classes=[str(c) for c in rank.classes], n_significant=n_sig, features=rows, counterfactual=ds.counterfactual,
        metric="logit_diff", clean_metric=Stat(**ci_dict(causal["clean"].numpy(), seed=args.seed)),
        counterfactual_metric=Stat(**ci_dict(causal["counterfactual"].numpy(), seed=args.seed)),
        identity_max_abs_diff=causal["identity_max_abs_diff"], causal=crow, summary=summary, warnings=warnings,
        files=run.files, cost=run.cost({}))
    return result, {"top_feature": r0.feature, "top_score": r0.score, "n_significant": n_sig}


def _plots(run, args, rank, top, vals, labels, names, crow, task) -> None:
    what = f"{task} / {args.variable} at {args.position}, {args.model}"
    lo = [rank.ci.get(f, (np.nan, np.nan))[0] for f in top]
    hi = [rank.ci.get(f, (np.nan, np.nan))[1] for f in top]
    fig = plots.bar_with_ci([names[f] for f in top], [rank.score[f] for f in top], lo, hi,
                            title=f"feature ranking ({rank.stat}, 95% bootstrap CI)\n{what}", ylabel=rank.stat,
                            ref=0.5 if rank.stat == "auroc" else 0.0)
    run.save_figure("ranking.png", fig, main=True)
    for f in top[:3]:
        series = {str(c): vals[[i for i, l in enumerate(labels) if l == c], f].tolist() for c in rank.classes}
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
        "for more) with bootstrap CIs, rank-test and label-permutation p-values and Benjamini-Hochberg q-values; shows top-"
        "activating contexts and histograms by value. Then tests the top features causally on clean prompts: zero "
        "or mean ablation, patching the feature's value from the counterfactual prompt, or steering; effect = (m_clean "
        "- m_intervened) / (m_clean - m_cf) with a 95% CI. Interventions keep the SAE error term, so an untouched "
        "feature leaves the model unchanged (identity_max_abs_diff reports it). Runs as a job."))
