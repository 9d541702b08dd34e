"""Tool attribute: which components (or edges) carry the behaviour, and is the circuit they form faithful?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from .. import lazy
from ..methods.core import Progress
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .common import DEFAULT_MODEL, MaybeFloat, Stat, metric_note, pair_dataset, per_token_metric, resolve_task
from .errors import ToolError

if TYPE_CHECKING:
    from ..methods.attribution import AttributionReport
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
plots = lazy("mcp_interp.artifacts.plots")
run_attribution = lazy("mcp_interp.methods.attribution", "run_attribution")
post_normed = lazy("mcp_interp.methods.core.writes", "post_normed")

TOOL = "attribute"
Method = Literal["exact", "atp", "atp_star", "grad", "grad_act", "ig", "act_diff", "dla", "eap", "eap_ig"]
NODE_ONLY = {"atp", "atp_star", "grad", "grad_act", "ig", "act_diff", "dla"}
DLA_SOURCE_HEADS = 12  # heads in the figure of direct attribution by source position
EDGE_ONLY = {"eap", "eap_ig"}
METHOD_DOC = (
    "exact: activation patching of each unit at every position, the patching engine's partial forwards (ground "
    "truth, slowest). atp: attribution patching "
    "(a(x)-a(x'))·∇m at x', 2 forwards + 1 backward for all units. atp_star: AtP* (Kramár et al. 2024): AtP with the "
    "QK fix (attention patterns a unit's change reaches are recomputed exactly, so a saturated softmax no longer "
    "hides it) and GradDrop (units whose direct and indirect effects cancel), on exact patching's scale. "
    "grad: |∇m| at x. grad_act: a(x)·∇m(x). ig: integrated gradients along the "
    "embedding path x'→x (ig_steps). act_diff: |a(x)-a(x')|, not causal, for contrast. dla: direct logit "
    "attribution, what each head / MLP / neuron writes straight into the logit difference through the unembedding "
    "with the final norm's scale frozen from the run (score: DLA(x)-DLA(x') normalised like the others; `direct`: "
    "the raw clean DLA in logits; heads also split by source position); logit_diff only, not level positions; a "
    "unit acting through later components scores ~0 (compare_exact shows it). eap / eap_ig: edge "
    "attribution patching (plain / integrated gradients) — level 'edges' only. exact on 'edges' patches each edge "
    "(small models only).")


class AttributeInput(HeavyInput):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    task: str = Field(..., description="Task name (list_tasks / define_task).")
    method: Method = Field("atp", description=METHOD_DOC)
    level: Literal["heads", "mlps", "neurons", "positions", "qkv", "edges"] = Field(
        "heads", description="Units to score: attention heads (outputs), MLP layers, the neurons of MLP `layer`, the "
        "task's named positions of the residual stream at `layer`, qkv (each head's query, key and value input: "
        "L3H2.q, L3H2.k, L3H2.v; per key-value group L3G1.k under GQA), or edges (sender output -> receiver "
        "q/k/v/MLP input).")
    layer: int | None = Field(None, description="For level 'neurons' (required) and 'positions' (default 0).")
    counterfactual: str | None = Field(None, description="Counterfactual generator (default: the task's first).")
    variable: str | None = Field(None, description="Instead of `counterfactual`: the generator that resamples exactly "
                                 "this variable.")
    metric: Literal["logit_diff", "prob", "prob_diff"] | None = Field(
        None, description="Default: the task's metric (prob_diff: tasks with an answer set, e.g. greater-than).")
    n: int = Field(16, ge=2, le=512, description="Number of clean/counterfactual pairs.")
    ig_steps: int = Field(10, ge=1, le=100, description="Integration points for ig / eap_ig.")
    compare_exact: bool = Field(False, description="Also run exact patching on the same units and report the "
                                "correlation with it and the cost of each (node levels only).")
    faithfulness: bool = Field(True, description="Evaluate circuits of the top k% units (k = 0.1 .. 100) with "
                               "everything outside patched from the counterfactual; report CPR and CMD.")


class UnitScore(BaseModel):
    name: str
    score: MaybeFloat = Field(description="normalised estimate of the unit's denoising effect (1.0 = restores all); "
                                          "null when undefined (clean and counterfactual metrics coincide)")
    ci95: list[MaybeFloat] | None = None


class FaithfulnessCurve(BaseModel):
    fractions: list[float]
    counts: list[int] = Field(description="units in the circuit at each fraction")
    signed: list[MaybeFloat] = Field(description="f of the top-k circuits ranked by signed score (null when the "
                                     "empty circuit keeps the whole behaviour: nothing to normalise by)")
    absolute: list[MaybeFloat] = Field(description="f of the top-k circuits ranked by |score|")
    cpr: MaybeFloat = Field(description="area under the signed-ranking curve (higher is better; MIB CPR)")
    cmd: MaybeFloat = Field(description="area under |1 - f| of the absolute-ranking curve (0 is ideal; MIB CMD)")
    empty: MaybeFloat = Field(None, description="share of the clean-counterfactual gap the empty circuit (every unit "
                                "from the counterfactual) keeps, (m(empty) - m(x')) / (m(x) - m(x')); "
                                "near 1 means these "
                                "units do not carry the difference and the curve is uninformative")


class Circuit(BaseModel):
    target: float = Field(description="the faithfulness the circuit should reach")
    empty_faithfulness: MaybeFloat = Field(description="faithfulness of the empty circuit")
    size: int = Field(description="units in the circuit")
    fraction: float = Field(description="the fraction of units on the curve it is taken at")
    faithfulness: MaybeFloat
    reached_target: bool
    units: list[str] = Field(description="its units, by signed score")
    uninformative: bool = Field(description="the curve cannot rank circuits (then size 0, no units; see reason)")
    reason: str | None = Field(None, description="why the curve is uninformative")


class ExactCost(BaseModel):
    forwards: int
    seconds: float


class ComparisonWithExact(BaseModel):
    pearson: MaybeFloat
    spearman: MaybeFloat
    spearman_abs: MaybeFloat = Field(description="Spearman correlation of |score| with |exact score|")
    top_k_overlap: float = Field(description="share of exact patching's top k units (by |score|) also ranked top k")
    top_k: int
    top_k_chance: float = Field(description="k / units: the overlap a random ranking expects")
    exact_scores: dict[str, MaybeFloat] = Field(description="exact patching's normalised score per unit")
    exact_cost: ExactCost
    speedup: MaybeFloat = Field(None, description="exact patching's seconds over the method's")


class DirectUnit(BaseModel):
    name: str
    direct: MaybeFloat = Field(description="mean direct logit attribution on the clean inputs (logit units)")
    ci95: list[MaybeFloat]


class DirectLogits(BaseModel):
    units: list[DirectUnit] = Field(description="the units of `top`, in that order, with their raw clean DLA")
    other: dict[str, MaybeFloat] = Field(description="mean clean direct terms of the rest of the stream (embed, "
                                         "pos_embed, biases, and the other level's components: MLPk beside heads, "
                                         "attnk beside MLPs); units + other = the logit difference")
    identity_error: MaybeFloat = Field(description="max |sum of all direct terms - logit difference| over examples "
                                       "(the decomposition's check; ~1e-6)")
    source_positions: list[str] | None = Field(None, description="heads: the named source positions, then 'rest'")
    sources: dict[str, dict[str, MaybeFloat]] | None = Field(
        None, description="heads: for the top heads, mean clean DLA through each source position (logit units): "
        "pattern[last, k] * v_k W_O read by the unembedding; all heads in scores.json")


class AttributeResult(RunResult):
    run_id: str
    task: str
    model: str
    method: str
    level: str
    counterfactual: str
    metric: str
    n: int
    seed: int
    clean_metric: Stat
    counterfactual_metric: Stat
    n_units: int
    top: list[UnitScore] = Field(description="the 15 units with the largest |score|")
    circuit: Circuit | None = Field(description="smallest top-k circuit (signed ranking) with faithfulness >= 0.8, or "
                                    "the most faithful one: size, fraction, faithfulness, units; uninformative=true "
                                    "(with reason) when the empty circuit already reaches 0.8; null with "
                                    "faithfulness=false")
    faithfulness: FaithfulnessCurve | None = None
    comparison_with_exact: ComparisonWithExact | None = None
    direct: DirectLogits | None = Field(None, description="method dla: raw direct logit attributions (logits)")


class AttributeOutput(HeavyOutput):
    result: AttributeResult | None = None


def _check_args(args: AttributeInput, n_layers: int) -> None:
    if args.level == "edges" and args.method in NODE_ONLY:
        raise ToolError(f"method: {args.method!r} scores nodes; for level 'edges' use eap, eap_ig or exact.")
    if args.level != "edges" and args.method in EDGE_ONLY:
        raise ToolError(f"method: {args.method!r} scores edges; pass level='edges' or a node method "
                        f"(atp, atp_star, ig, exact, ...).")
    if args.level == "neurons" and args.layer is None:
        raise ToolError("layer: level 'neurons' scores the neurons of one MLP layer; pass `layer`.")
    if args.layer is not None and not 0 <= args.layer < n_layers:
        raise ToolError(f"layer: {args.layer} out of range 0..{n_layers - 1}.")
    if args.compare_exact and args.level == "edges":
        raise ToolError("compare_exact: only for node levels (exact edge patching is one forward per edge).")
    if args.method == "dla" and args.level in ("positions", "qkv"):
        raise ToolError(f"level: dla scores what a unit writes into the residual stream; {args.level} are not "
                        f"writes (no direct effect). Use level='heads' (split by source position), 'mlps' or "
                        f"'neurons', or method='exact' for positions.")


def _attribute(run: ToolRun, args: AttributeInput) -> tuple[AttributeResult, dict]:
    spec = resolve_task(run.app, args.task)
    metric_name = per_token_metric(spec, args.metric, "attribution")
    if args.method == "dla" and metric_name != "logit_diff":
        raise ToolError(f"metric: dla decomposes a metric linear in the logits; {metric_name} is a softmax of every "
                        f"logit and does not split into direct terms. Fix: pass metric='logit_diff' (or another "
                        f"method, e.g. atp or exact, for {metric_name}).")
    lm = run.load(args.model)
    cfg = lm.model.cfg
    _check_args(args, cfg.n_layers)
    if args.level in ("mlps", "neurons") and cfg.attn_only:
        raise ToolError(f"level: {args.model} is attention-only; it has no MLPs. Use heads, positions or edges.")
    ds, metric, clean, corrupt = pair_dataset(spec, lm, args.model, args.n, args.seed, args.variable,
                                              args.counterfactual, metric_name)
    names = ds.position_names
    positions = [[e.positions[p] for p in names] for e in ds.examples] if names else None
    if args.level == "positions" and not names:
        raise ToolError(f"level: task {spec.name!r} has no named positions to score.")
    with lm.use():
        try:
            rep = run_attribution(lm.model, args.method, args.level, clean, corrupt, metric, positions, names,
                                  layer=args.layer if args.level == "neurons" else (args.layer or 0),
                                  ig_steps=args.ig_steps, compare_exact=args.compare_exact,
                                  faithfulness=args.faithfulness, seed=args.seed,
                                  progress=run.span(end=0.95), should_cancel=run.should_cancel,
                                  act_cache=run.app.activations)
        except ValueError as e:
            raise ToolError(f"method: {e}") from None
    run.progress(0.96, "plots and store")
    return _result(run, args, spec, lm, ds, rep, metric_name)


def _result(run: ToolRun, args, spec, lm, ds, rep: AttributionReport, metric_name) -> tuple[AttributeResult, dict]:
    run.open(spec, args.model, lm, args.seed)
    top = [UnitScore(name=u.name, score=round(u.score, 4),
                     ci95=None if u.lo is None else [round(u.lo, 4), round(u.hi, 4)])
           for u in rep.ranked(15)]
    run.write_tensors("scores.safetensors", rep.tensors())
    faith = _faithfulness(rep)
    _write_scores(run, rep, ds, faith)
    run.publish("result.json")
    _plots(run, args, spec, lm, rep, len(ds))
    clean, counterfactual = rep.metric_stats(args.seed)
    result = AttributeResult(
        run_id=run.run_id, task=spec.name, model=args.model, method=args.method, level=args.level,
        counterfactual=ds.counterfactual, metric=metric_name, n=len(ds), seed=args.seed,
        clean_metric=Stat(**clean), counterfactual_metric=Stat(**counterfactual), n_units=len(rep.units), top=top,
        circuit=Circuit(**rep.circuit) if rep.circuit else None, faithfulness=faith,
        comparison_with_exact=ComparisonWithExact(**rep.comparison) if rep.comparison else None,
        direct=_direct(rep, top),
        summary=_summary(args, spec.name, rep, top[0], faith),
        warnings=_warnings(args, spec, lm, rep, metric_name, top[0]), files=run.files, cost=run.cost(rep.cost))
    t = top[0]
    return result, {"top_unit": t.name, "top_score": t.score, **({"cpr": faith.cpr, "cmd": faith.cmd} if faith else {})}


def _direct(rep: AttributionReport, top: list[UnitScore]) -> DirectLogits | None:
    d = rep.direct
    if d is None:
        return None
    at = {u: i for i, u in enumerate(rep.units)}
    units = [DirectUnit(name=t.name, direct=round(float(d.mean[at[t.name]]), 4),
                        ci95=[round(float(d.lo[at[t.name]]), 4), round(float(d.hi[at[t.name]]), 4)]) for t in top]
    sources = None
    if d.sources is not None:
        sources = {t.name: {p: round(float(v), 4) for p, v in zip(d.source_names, d.sources[at[t.name]])}
                   for t in top[:DLA_SOURCE_HEADS]}
    return DirectLogits(units=units, other={k: round(v, 4) for k, v in d.other.items()},
                        identity_error=d.identity_error, source_positions=d.source_names or None, sources=sources)


def _faithfulness(rep: AttributionReport) -> FaithfulnessCurve | None:
    if not rep.curves:
        return None
    s, a = rep.curves["signed"], rep.curves["abs"]
    return FaithfulnessCurve(fractions=s.fractions, counts=s.counts, signed=s.faithfulness, absolute=a.faithfulness,
                             cpr=round(s.area, 4), cmd=round(a.area, 4), empty=round(s.empty, 4))


def _write_scores(run: ToolRun, rep: AttributionReport, ds, faith: FaithfulnessCurve | None) -> None:
    run.write_json("scores.json", {"units": rep.units, "layers": rep.layers, "scores": rep.scores.tolist(),
                                   "ci95_low": None if rep.lo is None else rep.lo.tolist(),
                                   "ci95_high": None if rep.hi is None else rep.hi.tolist(),
                                   "faithfulness": faith.model_dump() if faith else None, "circuit": rep.circuit,
                                   "comparison_with_exact": rep.comparison, **_direct_json(rep),
                                   "prompts": [e.prompt for e in ds.examples],
                                   "counterfactual_prompts": [e.cf_prompt for e in ds.examples]})


def _direct_json(rep: AttributionReport) -> dict:
    """scores.json's dla fields: direct (clean DLA per unit, logits, with CIs), direct_other, and per (head, source
    position) direct_sources (clean DLA, logits) and direct_sources_score (normalised like `scores`)."""
    d = rep.direct
    if d is None:
        return {}
    out = {"direct": {"mean": d.mean.tolist(), "ci95_low": d.lo.tolist(), "ci95_high": d.hi.tolist()},
           "direct_other": d.other, "direct_identity_error": d.identity_error}
    if d.sources is not None:
        out["direct_sources"] = {"positions": d.source_names, "direct": d.sources.tolist(),
                                 "score": d.sources_score.tolist()}
    return out


def _warnings(args, spec, lm, rep: AttributionReport, metric_name: str, top: UnitScore) -> list[str]:
    warnings = metric_note(spec, args.metric, metric_name)
    if args.method == "eap" and post_normed(lm.model):
        warnings.append("eap's first-order estimate runs through norms applied to every sublayer's output "
                        "on this model; "
                        "its edge ranking can be poor (Gemma-3-270M, agreement: CPR 0.57 with eap, 1.18 with eap_ig). "
                        "Prefer method='eap_ig'")
    if abs(rep.gap) < 0.5 and metric_name == "logit_diff":
        warnings.append(f"the clean-counterfactual gap is small ({rep.gap:.3f}): normalised scores are noisy")
    if args.method == "act_diff":
        warnings.append("act_diff is not causal: it flags components that change, whether or not they matter")
    if args.method == "dla":
        warnings += _dla_warnings(rep)
    if rep.circuit and rep.circuit.get("uninformative"):
        warnings.append(f"faithfulness curve uninformative: {rep.circuit['reason']}")
    elif rep.circuit and not rep.circuit["reached_target"]:
        warnings.append(f"no circuit on the curve reaches faithfulness {rep.circuit['target']}; the most faithful "
                        f"one is reported")
    if top.score is None:
        warnings.append("scores are undefined (null): the clean and counterfactual metrics coincide on these pairs, so "
                        "there is no gap to normalise by; check run_baseline and the counterfactual")
    return warnings


def _dla_warnings(rep: AttributionReport) -> list[str]:
    d = rep.direct
    out = ["dla measures only what a unit writes straight to the logits (final norm scale frozen from the run): a "
           "unit that acts through later components (e.g. a head whose output a later head reads) scores ~0 even "
           "when patching it matters; DLA is not patching. compare_exact=true shows the difference"]
    m = float(rep.m_clean.mean())
    if len(d.mean) and float(abs(d.mean).max()) < 0.05 * abs(m) and d.other:
        name, v = max(d.other.items(), key=lambda kv: abs(kv[1]))
        out.append(f"no unit of this level writes much of the answer directly (largest {float(abs(d.mean).max()):.2g} "
                   f"logits of the clean logit difference {m:.2f}); the largest direct term is {name} ({v:+.2f}): "
                   f"score that level, or trace what feeds it")
    if d.capped:
        out.append("the model soft-caps its output logits: direct terms add up to the logit difference before the "
                   "cap, not to the capped metric the scores are normalised by")
    if not d.identity_error <= 1e-3 * max(1.0, float(abs(rep.m_clean).max())):
        out.append(f"the direct terms miss the logit difference by up to {d.identity_error:.3g} (reduced precision?)")
    return out


def _summary(args, task: str, rep: AttributionReport, t: UnitScore, faith: FaithfulnessCurve | None) -> str:
    summary = f"{args.method} on {args.level}: top {t.name} ({'n/a' if t.score is None else f'{t.score:+.2f}'})"
    if rep.direct is not None:
        summary += f", {rep.direct.mean[rep.units.index(t.name)]:+.2f} logits direct on the clean inputs"
    circuit = rep.circuit
    if circuit and circuit.get("uninformative"):
        summary += f"; faithfulness curve uninformative ({circuit['reason'].split(':')[0]})"
    elif circuit:
        summary += (f"; circuit of {circuit['size']} units ({100 * circuit['fraction']:g}%) has faithfulness "
                    f"{circuit['faithfulness']:.2f}; CPR {faith.cpr:.3f}, CMD {faith.cmd:.3f}")
    if rep.comparison:
        c = rep.comparison
        summary += (f"; vs exact patching: Pearson {c['pearson']:.2f}, "
                    f"top-{c['top_k']} overlap {c['top_k_overlap']:.2f} "
                    f"(chance {c['top_k_chance']:.2f})" + (f", {c['speedup']:.1f}x faster" if c.get("speedup") else ""))
    return summary + (f". Next: locate(task='{task}') confirms the top units with exact patching; scrub_hypothesis "
                      f"tests whether they suffice")


def _plots(run: ToolRun, args, spec, lm, rep: AttributionReport, n) -> None:
    what = f"{spec.name} on {args.model}, {args.method}, n={n}"
    circuit = bool(rep.circuit and rep.circuit["units"])  # edges have no score plot: their circuit is the main figure
    if args.level == "heads":
        cfg = lm.model.cfg
        run.save_figure("heads_heatmap.png", plots.heatmap(
            rep.head_grid(cfg.n_layers, cfg.n_heads), row_labels=[str(l) for l in range(cfg.n_layers)],
            col_labels=[str(h) for h in range(cfg.n_heads)], title=f"head attribution (normalised)\n{what}",
            cbar_label="score", xlabel="head", ylabel="layer"), main=True)
    elif args.level != "edges":
        bars = rep.ranked(30, undefined="last")
        run.save_figure("scores_bar.png", plots.bar_with_ci(
            [u.name for u in bars], [u.score for u in bars], None if rep.lo is None else [u.lo for u in bars],
            None if rep.hi is None else [u.hi for u in bars],
            title=f"{args.level} attribution (top {len(bars)})\n{what}", ylabel="normalised score"), main=True)
    if rep.direct is not None and rep.direct.sources is not None:
        _sources_plot(run, rep, what)
    if rep.curve_defined:  # an undefined curve has nothing to draw
        s, a = rep.curves["signed"], rep.curves["abs"]
        run.save_figure("faithfulness.png", plots.line_plot(
            [100 * f for f in s.fractions], {f"signed ranking (CPR {s.area:.2f})": s.faithfulness,
                                             f"|score| ranking (CMD {a.area:.2f})": a.faithfulness},
            title=f"circuit faithfulness\n{what}", xlabel="% of units in the circuit", ylabel="faithfulness f",
            xscale="log", hlines={"full model": 1.0, "empty circuit": 0.0}), main=args.level == "edges" and not circuit)
    if circuit:
        nodes, edges = rep.circuit_graph(max_units=40)
        size = len(rep.circuit["units"][:40])
        run.save_figure("circuit.png", plots.layered_graph(
            nodes, edges, title=f"circuit: {size} {args.level} (f = {rep.circuit['faithfulness']:.2f})\n{what}"),
            main=args.level == "edges")


def _sources_plot(run: ToolRun, rep: AttributionReport, what: str) -> None:
    d = rep.direct
    heads = rep.ranked(DLA_SOURCE_HEADS)
    run.save_figure("dla_sources.png", plots.heatmap(
        d.sources[[u.index for u in heads]], row_labels=[u.name for u in heads], col_labels=d.source_names,
        title=f"DLA by source position (clean, logits)\n{what}", cbar_label="logits",
        xlabel="source position", ylabel="head"))


def attribute(app: AppContext, args: AttributeInput, progress: Progress | None = None) -> AttributeOutput:
    spec = resolve_task(app, args.task)
    return run_heavy(app, TOOL, args, spec.name, args.model,
                     f"attribute {spec.name} on {args.model} ({args.method}, {args.level}, n={args.n})",
                     _attribute, AttributeOutput, progress)


ATTRIBUTE = ToolSpec(
    TOOL, fn=attribute, input_model=AttributeInput, output_model=AttributeOutput, progress=True, description=(
        "Which components carry the behaviour, and is the circuit they form faithful? Scores attention heads, MLP "
        "layers, neurons of one layer, named positions, or edges (sender output -> receiver q/k/v/MLP input) with "
        "exact patching or a cheap estimate (atp, atp_star, grad, grad_act, ig, act_diff; eap, eap_ig for edges). "
        "Scores are normalised denoising effects (1 = the unit alone restores the clean behaviour), with bootstrap "
        "CIs for node levels. Then evaluates the top-k% circuits (k = 0.1..100) with everything outside patched "
        "from the counterfactual: faithfulness f = (m(C) - m(empty)) / (m(full) - m(empty)), CPR and CMD as MIB "
        "defines them, and the smallest circuit with f >= 0.8 (flagged uninformative when the empty circuit already "
        "has f >= 0.8). atp_star applies AtP*'s QK fix, so heads behind a saturated attention softmax are not missed; "
        "level qkv scores each head's query/key/value input. compare_exact=true also runs exact patching and "
        "reports the correlation and the cost of each. method=dla: direct logit attribution (each unit's "
        "write read straight through the unembedding, final norm scale frozen; heads split by source position; "
        "logit_diff only). Plots: layer x head heatmap, faithfulness curve, circuit "
        "graph. Runs as a job; identical requests return the stored run."))
