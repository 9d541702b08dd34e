"""Tool compare_features: do two models (or two layers, or two SAEs of one model) carry the same features — how
many matches would chance alone give, and which matches do the same thing causally in both?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field

from .. import lazy
from ..methods import compare, features
from ..methods.core import Progress
from ..methods.core.footprint import Footprint
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import MaybeFloat, check_pairs, counterfactual_name, resolve_task, task_metric
from .compare_inputs import Side, corpus_rows, describe_side, side_sources, side_values, task_rows
from .errors import ToolError
from .load_sae import sae_directory

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
torch = lazy("torch")
plots = lazy("mcp_interp.artifacts.plots")

TOOL = "compare_features"
SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_post")
MAX_ROWS = 8192  # aligned rows kept (Gram matrices are rows x rows)


class CompareFeaturesInput(HeavyInput):
    a: Side = Field(..., description="Side A: {model, source, layer, site, sae, das_run, probe_run}.")
    b: Side = Field(..., description="Side B, the same keys as `a` (another model, layer, SAE seed, probe run...).")
    task: str | None = Field(None, description="Compare on this task's prompts at `position` (resolved per model, so "
                             "it works across tokenizers). Give `task` or `corpus`.")
    corpus: Literal["shakespeare", "random"] | None = Field(
        None, description="Compare on text, token by token (same tokenizer) or at shared character ends (different "
        "tokenizers); 'random': uniform random tokens (toy models with one tokenizer). No causal test on a corpus.")
    position: str = Field("END", description="task: the named position whose activations are compared.")
    variable: str | None = Field(None, description="task: a variable whose separation (AUROC / eta^2) each matched "
                                 "feature's row reports; causal tests then favour matches that carry it and use a "
                                 "counterfactual that resamples it.")
    counterfactual: str | None = Field(None, description="task: generator for the causal tests (default: one that "
                                       "resamples `variable`, else the task's first that changes the answer).")
    n: int = Field(128, ge=8, le=4096, description="task: prompts.")
    tokens: int = Field(2048, ge=64, le=MAX_ROWS, description="corpus: aligned tokens (rows) to compare.")
    context: int = Field(32, ge=4, le=512, description="corpus: tokens per window.")
    fdr: float = Field(0.05, gt=0, lt=1, description="Benjamini-Hochberg level of the match set.")
    null: Literal["both", "shuffle", "rotation"] = Field(
        "both", description="Null of the matching: shuffle = re-pair B's examples (on a corpus: circular shift by "
        "whole windows), exact for unrelated sides; rotation = random rotations of B's standardised features, so a "
        "match must beat what shared low-dimensional structure alone gives (on task prompts every unit tracks the "
        "template); both (default) = the larger p of the two.")
    n_null: int = Field(20, ge=1, le=500, description="Null replicates of the whole matching (each a Hungarian "
                        "assignment).")
    n_perm: int = Field(200, ge=19, le=10_000, description="Permutations for the CKA / SVCCA p-values (at least 19, so "
                        "p can reach 0.05).")
    ceiling: Side | None = Field(None, description="Noise ceiling: side A's model again with another SAE seed (or "
                                 "another layer); CKA and matches of A against it are reported beside A vs B.")
    test_top: int = Field(5, ge=0, le=50, description="task: matches (of the FDR set) to test causally on both sides.")
    intervention: Literal["zero", "mean", "patch"] = Field(
        "patch", description="Causal test on each side: zero / mean ablation of the matched feature, or patching its "
        "value from the counterfactual prompt; effect = (m_clean - m_intervened) / (m_clean - m_cf), per model.")
    top: int = Field(10, ge=1, le=200, description="Matches to report with their top-activating contexts.")


class Effect(BaseModel):
    effect: MaybeFloat
    ci95: list[MaybeFloat]


class Context(BaseModel):
    """Where a feature fires strongly: the prompt (task) or the text before the token (corpus), and its value."""
    token: str
    value: MaybeFloat = Field(description="the feature's value (null if not finite)")
    prompt: str | None = None
    text: str | None = None


class MatchRow(BaseModel):
    feature_a: int
    name_a: str
    feature_b: int
    name_b: str
    r: MaybeFloat = Field(description="Pearson correlation over the aligned examples (null for a constant feature)")
    p: MaybeFloat = Field(description="against the pooled null of matched |r|")
    q: MaybeFloat
    significant: bool
    decoder_cos: MaybeFloat = Field(None, description="cosine of the two features' directions (same space only)")
    variable_score_a: MaybeFloat = None
    variable_score_b: MaybeFloat = None
    causal_a: Effect | None = None
    causal_b: Effect | None = None
    status: str | None = Field(None, description="validated / correlational only / contradicted (tested matches)")
    top_contexts_a: list[Context] = []
    top_contexts_b: list[Context] = []


class Similarity(BaseModel):
    cka: MaybeFloat
    cka_p: MaybeFloat
    cka_null_mean: MaybeFloat
    svcca: MaybeFloat
    svcca_p: MaybeFloat
    svcca_dims: list[int]


class SideInfo(BaseModel):
    model: str
    source: str
    hook: str = Field(description="the hook of the first layer's features")
    layers: list[int]
    n_features: int
    sae: str | None = None
    das_run: str | None = None
    probe_run: str | None = None


class Ceiling(BaseModel):
    side: SideInfo
    cka: MaybeFloat
    svcca: MaybeFloat
    n_pairs: int
    n_matched: int
    expected_null: MaybeFloat


class Unmatched(BaseModel):
    a: int
    b: int


class CompareFeaturesResult(RunResult):
    run_id: str
    a: SideInfo
    b: SideInfo
    inputs: str = Field(description="task name or corpus")
    n_rows: int = Field(description="aligned examples (task prompts, or corpus tokens)")
    alignment: str
    layers_a: list[int]
    layers_b: list[int]
    cka_map: list[list[MaybeFloat]] | None = Field(None, description="[layers_a x layers_b] linear CKA")
    matched_layers: list[int] = Field(description="the layer pair whose features are matched")
    layer_choice: str = Field(description="why that pair: what the layer pairs were ranked by")
    layer_scores: list[list[MaybeFloat]] | None = Field(
        None, description="[layers_a x layers_b] what the pair was chosen by: the variable's separation on the "
        "weaker side, or CKA beyond the token identity (each token's mean removed)")
    similarity: Similarity
    ceiling: Ceiling | None = Field(None, description="A against the ceiling side: CKA, SVCCA, matches")
    n_features: list[int]
    n_live: list[int] = Field(description="non-constant features per side (only these are matched)")
    n_pairs: int = Field(description="one-to-one pairs the assignment makes")
    n_matched: int = Field(description="pairs in the FDR set")
    expected_null: float = Field(description="pairs a null replicate puts above the FDR set's cut-off (mean)")
    null_rate: float = Field(description="expected_null / n_pairs")
    threshold: MaybeFloat = Field(description="smallest |r| in the FDR set")
    fdr: float
    null: str
    causal_counts: dict[Literal["validated", "correlational only", "contradicted"], int]
    matches: list[MatchRow]
    unmatched: Unmatched = Field(description="live features of each side outside the FDR set")


class CompareFeaturesOutput(HeavyOutput):
    result: CompareFeaturesResult | None = None


# ------------------------------------------------------------------ the work

def _compare(run: ToolRun, args: CompareFeaturesInput) -> tuple[CompareFeaturesResult, dict]:
    if (args.task is None) == (args.corpus is None):
        raise ToolError("task: give exactly one of `task` (prompts at a named position) or `corpus`.")
    spec = resolve_task(run.app, args.task) if args.task else None
    lm_a = run.load(args.a.model)
    lm_b = run.load(args.b.model) if args.b.model != args.a.model else lm_a
    src_a, src_b = side_sources(run, args.a, lm_a, "a"), side_sources(run, args.b, lm_b, "b")
    src_c = None
    if args.ceiling is not None:
        if args.ceiling.model != args.a.model:
            raise ToolError("ceiling.model: the noise ceiling compares side A's model with itself; use a.model.")
        src_c = side_sources(run, args.ceiling, lm_a, "ceiling")[:1]
    cf_name = _counterfactual(spec, args) if spec is not None else None
    rows = task_rows(args, spec, lm_a, lm_b, cf_name) if spec is not None else corpus_rows(args, lm_a, lm_b)
    labels = _labels(rows, spec, args.variable)
    widths = [s.n for _, s in src_a], [s.n for _, s in src_b] + [s.n for _, s in src_c or []]
    field = "n" if spec is not None else "tokens"
    refuse_oversized(Footprint(lambda **kw: compare.comparison_footprint(kw[field], *widths), {field: len(rows.seq)}),
                     f"comparing {len(src_a)} x {len(src_b)} layers")
    layers_a, layers_b = [l for l, _ in src_a], [l for l, _ in src_b]
    run.progress(0.08, f"activations on {len(rows.seq)} aligned rows")
    va = side_values(run, lm_a, src_a, rows.toks_a, rows, rows.pos_a)
    vb = side_values(run, lm_b, src_b, rows.toks_b, rows, rows.pos_b)
    ceiling_values = side_values(run, lm_a, src_c, rows.toks_a, rows, rows.pos_a)[0] if src_c else None
    cmp = compare.compare_sides(va, vb, groups=rows.groups, tokens_a=rows.tokens("a"), tokens_b=rows.tokens("b"),
                          labels=labels, layer_names=(layers_a, layers_b), ceiling=ceiling_values,
                          n_perm=args.n_perm, n_null=args.n_null, fdr=args.fdr, null=args.null,
                          test_top=args.test_top if spec is not None else 0, seed=args.seed,
                          progress=run.span(0.2, 0.45), should_cancel=run.should_cancel)
    m, (ia, ib) = cmp.matching, cmp.layers.pair
    A, B, sa, sb = va[ia], vb[ib], src_a[ia][1], src_b[ib][1]
    warnings: list[str] = []
    effects = _causal_tests(run, args, cmp, rows, (lm_a, sa, A), (lm_b, sb, B), cf_name, warnings)
    run.open(spec, args.a.model, lm_a, args.seed) if spec is not None else \
        run.open_untasked(f"corpus:{args.corpus}", args.a.model, lm_a, args.seed)
    names_a, names_b, same_space = sa.names(), sb.names(), lm_b is lm_a and sa.site.hook == sb.site.hook
    out_rows = _match_rows(cmp, effects, args.top, rows, (lm_a, sa, A), (lm_b, sb, B), (names_a, names_b),
                           same_space)
    counts = compare.status_counts([e[2] for e in effects.values()])
    _plots(run, args, cmp.layers.cka_map, layers_a, layers_b, m, effects, names_a, names_b, rows.label)
    _store(run, A, B, rows.seq, m)
    ceiling = Ceiling(side=describe_side(args.ceiling, src_c), **cmp.ceiling) if cmp.ceiling else None
    warnings += _warnings(args, len(rows.seq), m)
    cmap, scores = cmp.layers.cka_map, cmp.layers.scores
    result = CompareFeaturesResult(
        run_id=run.run_id, a=describe_side(args.a, src_a), b=describe_side(args.b, src_b),
        inputs=spec.name if spec is not None else f"corpus:{args.corpus}", n_rows=len(rows.seq),
        alignment=rows.alignment, layers_a=layers_a, layers_b=layers_b,
        cka_map=cmap.round(4).tolist() if cmap is not None else None, matched_layers=[layers_a[ia], layers_b[ib]],
        layer_choice=cmp.layers.reason, layer_scores=scores.round(4).tolist() if scores is not None else None,
        similarity=Similarity(cka=cmp.cka["cka"], cka_p=cmp.cka["p"], cka_null_mean=cmp.cka["null_mean"],
                              svcca=cmp.svcca["mean"], svcca_p=cmp.svcca["p"], svcca_dims=cmp.svcca["dims"]),
        ceiling=ceiling, n_features=[A.shape[1], B.shape[1]], n_live=list(m.n_live),
        n_pairs=len(m.r), n_matched=m.n_significant, expected_null=m.expected_null, null_rate=m.null_rate,
        threshold=m.threshold, fdr=args.fdr, null=args.null, causal_counts=counts, matches=out_rows,
        unmatched=Unmatched(a=len(m.unmatched_a), b=len(m.unmatched_b)),
        summary=_summary(run.run_id, rows.label, cmp, counts, len(effects), args.fdr), warnings=warnings,
        files=run.files, cost=run.cost({}))
    return result, {"cka": cmp.cka["cka"], "n_matched": m.n_significant, "expected_null": m.expected_null,
                    "validated": counts["validated"]}


def _store(run: ToolRun, A, B, seq, m) -> None:
    """The matched layers' activations and the whole matching (null pools included), then the result."""
    run.write_tensors("activations.safetensors", {"a": torch.as_tensor(A), "b": torch.as_tensor(B),
                                                  "seq": torch.as_tensor(seq)})
    run.write_json("matches.json", {"rows": m.rows.tolist(), "cols": m.cols.tolist(), "r": m.r.tolist(),
                                    "p": m.p.tolist(), "q": m.q.tolist(), "significant": m.significant.tolist(),
                                    "null_abs_r": {k: v.tolist() for k, v in m.null_r.items()}, "n_null": m.n_null,
                                    "null": m.null, "fdr": m.fdr, "expected_null": m.expected_null})
    run.publish("result.json")


def _counterfactual(spec, args: CompareFeaturesInput) -> str | None:
    """The causal tests' generator: the one asked for, else one that resamples `variable`, else the task's first
    that changes the answer."""
    if args.counterfactual is not None:
        return args.counterfactual
    if args.variable:
        try:
            return counterfactual_name(spec, args.variable, None)
        except ToolError:  # no generator resamples exactly the variable
            pass
    return next((c.name for c in spec.counterfactuals if getattr(c, "changes_answer", True)), None)


def _labels(rows, spec, variable: str | None) -> list[str] | None:
    """The variable's value on each task row (None without a variable or on a corpus)."""
    if spec is None or not variable:
        return None
    if variable not in rows.ds_a.examples[0].base:
        raise ToolError(f"variable: {variable!r} is not a variable of {spec.name!r}.")
    return [str(e.base[variable]) for e in rows.ds_a.examples]


def _causal_tests(run: ToolRun, args, cmp, rows, side_a: tuple, side_b: tuple, cf_name: str | None,
                  warnings: list[str]) -> dict[int, tuple]:
    """match index -> (effect in A, effect in B, status) for the matches `cmp` chose to test."""
    if not cmp.tested:
        return {}
    if cf_name is None:
        warnings.append("no counterfactual changes the answer: no causal test")
        return {}
    m = cmp.matching
    run.progress(0.45, f"causal tests of {len(cmp.tested)} matches on both sides")
    (lm_a, sa, A), (lm_b, sb, B) = side_a, side_b
    # one model on the same prompts: both sides' tests share the clean and counterfactual runs
    same = (lm_b is lm_a and rows.toks_a == rows.toks_b and rows.pos_a == rows.pos_b
            and [e.cf_tokens for e in rows.ds_a.examples] == [e.cf_tokens for e in rows.ds_b.examples])
    ea, ida, runs = _causal(run, lm_a, sa, rows.ds_a, rows.pos_a, [int(m.rows[k]) for k in cmp.tested], args, A,
                            0.45, 0.65)
    eb, idb, _ = _causal(run, lm_b, sb, rows.ds_b, rows.pos_b, [int(m.cols[k]) for k in cmp.tested], args, B,
                         0.65, 0.85, runs if same else None)
    out = {}
    for k in cmp.tested:
        a, b = ea[int(m.rows[k])], eb[int(m.cols[k])]
        out[k] = (a, b, compare.causal_status(a["ci95"], b["ci95"], float(np.sign(m.r[k])), tol=max(1e-6, ida, idb)))
    return out


def _match_rows(cmp, effects: dict, top: int, rows, side_a: tuple, side_b: tuple, names: tuple,
                same_space: bool) -> list[MatchRow]:
    """The `top` matches by the report order, then the tested ones not among them."""
    (lm_a, sa, A), (lm_b, sb, B) = side_a, side_b
    m = cmp.matching
    report = cmp.order[:top] + [k for k in cmp.tested if k not in cmp.order[:top]]
    return [_match_row(k, cmp, effects.get(k), names, (sa, sb) if same_space else None,
                       [rows.contexts(A[:, int(m.rows[k])], "a", lm_a.tokenizer),
                        rows.contexts(B[:, int(m.cols[k])], "b", lm_b.tokenizer)]) for k in report]


def _match_row(k: int, cmp, effect: tuple | None, names: tuple, sources: tuple | None,
               contexts: list[list[dict]]) -> MatchRow:
    m = cmp.matching
    fa, fb = int(m.rows[k]), int(m.cols[k])
    dcos = float(compare.decoder_cosines(sources[0].direction(fa)[None].numpy(), sources[1].direction(fb)[None].numpy(),
                                   np.array([0]), np.array([0]))[0]) if sources else None
    var_a, var_b = cmp.variable_a or {}, cmp.variable_b or {}
    return MatchRow(
        feature_a=fa, name_a=names[0][fa], feature_b=fb, name_b=names[1][fb], r=round(float(m.r[k]), 4),
        p=float(m.p[k]), q=float(m.q[k]), significant=bool(m.significant[k]), decoder_cos=dcos,
        variable_score_a=round(float(var_a[fa]), 4) if fa in var_a else None,
        variable_score_b=round(float(var_b[fb]), 4) if fb in var_b else None,
        causal_a=Effect(effect=effect[0]["effect"], ci95=effect[0]["ci95"]) if effect else None,
        causal_b=Effect(effect=effect[1]["effect"], ci95=effect[1]["ci95"]) if effect else None,
        status=effect[2] if effect else None, top_contexts_a=contexts[0], top_contexts_b=contexts[1])


def _summary(run_id: str, label: str, cmp, counts: dict, n_tested: int, fdr: float) -> str:
    ck, sv, m = cmp.cka, cmp.svcca, cmp.matching
    out = (f"{label}: CKA {ck['cka']:.3f} (p {ck['p']:.3g}, null mean {ck['null_mean']:.3f}), SVCCA "
           f"{sv['mean']:.3f}; {m.n_significant} of {len(m.r)} one-to-one pairs matched at FDR {fdr:g} "
           f"(chance alone: {m.expected_null:.1f})")
    if cmp.layers.cka_map is not None:
        out += f"; layer pair: {cmp.layers.reason}"
    if n_tested:
        out += (f"; causal: {counts['validated']} validated, {counts['correlational only']} correlational only, "
                f"{counts['contradicted']} contradicted of {n_tested} tested")
    if cmp.ceiling:
        out += f"; ceiling (A vs another A): CKA {cmp.ceiling['cka']:.3f}, {cmp.ceiling['n_matched']} matched"
    return out + f". Next: {_next_step(run_id, counts, m.n_significant)}"


def _warnings(args: CompareFeaturesInput, n_rows: int, m) -> list[str]:
    out = []
    if args.null in ("both", "rotation") and n_rows < 2 * min(m.n_live):
        # with fewer examples than features, B's features span (nearly) the whole example space, so a random
        # rotation of them fits any feature of A about as well as its true partner: the rotation null then
        # accepts nothing, whatever the sides share
        out.append(f"{n_rows} aligned examples for {min(m.n_live)} live features per side: the rotation null is "
                   f"uninformative below ~2 examples per feature (nothing can pass it); raise `n` / `tokens` or "
                   f"compare fewer features")
    if args.corpus and args.test_top:
        out.append("no causal test on a corpus (no task metric): give a task for causal preservation")
    return out


def _causal(run: ToolRun, lm, source, ds, pos, feats: list[int], args, values, lo: float, hi: float,
            runs=None) -> tuple[dict, float, object]:
    """One side's causal tests of its matched features (`features.matched_feature_effects`)."""
    check_pairs(ds, "logit_diff")
    with lm.use():
        return features.matched_feature_effects(
            lm.model, source, [e.tokens for e in ds.examples], [e.cf_tokens for e in ds.examples], pos,
            task_metric("logit_diff", ds), feats, args.intervention, values, seed=args.seed,
            progress=run.span(lo, hi), should_cancel=run.should_cancel, runs=runs)


def _next_step(run_id: str, counts: dict, n_matched: int) -> str:
    if not n_matched:
        return ("nothing matched beyond chance: check the warnings (examples per feature), try other layers (a range "
                "draws the CKA map) or another source; report(run_ids=[...]) records the negative result.")
    if counts.get("contradicted"):
        return (f"look at the contradicted matches in `matches` (they correlate but act oppositely); "
                f"report(run_ids=['{run_id}', ...]) when done.")
    return f"read the top matches' contexts in `matches`; report(run_ids=['{run_id}', ...]) to write it up."


def _plots(run, args, cmap, layers_a, layers_b, m, effects, names_a, names_b, label) -> None:
    what = f"{args.a.model} ({args.a.source}) vs {args.b.model} ({args.b.source}), {label}"
    if cmap is not None:
        fig = plots.heatmap(cmap, [str(l) for l in layers_a], [str(l) for l in layers_b],
                            title=f"linear CKA over layers\n{what}", cbar_label="CKA", center_zero=False,
                            xlabel=f"B layer ({args.b.model})", ylabel=f"A layer ({args.a.model})")
        run.save_figure("cka_map.png", fig)
    fig = plots.histogram({"matched |r|": np.abs(m.r), **{f"null: {k} ({m.n_null} replicates)": v.ravel()
                                                          for k, v in m.null_r.items()}},
                          title=f"one-to-one matches against the null; {m.n_significant} at FDR {m.fdr:g}\n{what}",
                          xlabel="|correlation| of a matched pair", density=True)
    run.save_figure("match_histogram.png", fig, main=True)
    if effects:
        ks = list(effects)
        fig = plots.scatter_with_ci([effects[k][0]["effect"] for k in ks], [effects[k][1]["effect"] for k in ks],
                                    [effects[k][0]["ci95"] for k in ks], [effects[k][1]["ci95"] for k in ks],
                                    [effects[k][2] for k in ks],
                                    labels=[f"{names_a[int(m.rows[k])]}~{names_b[int(m.cols[k])]}" for k in ks],
                                    title=f"causal effect of the same intervention ({args.intervention})\n{what}",
                                    xlabel="effect in A (normalised)", ylabel="effect in B (normalised)")
        run.save_figure("causal_scatter.png", fig)


def compare_features(app: AppContext, args: CompareFeaturesInput,
                     progress: Progress | None = None) -> CompareFeaturesOutput:
    for name, side in (("a", args.a), ("b", args.b), ("ceiling", args.ceiling)):
        if side is not None and side.sae:
            sae_directory(app, side.sae, f"{name}.sae")  # a path is confined before the run cache could answer
    label = args.task if args.task else f"corpus:{args.corpus}"
    if args.task:
        label = resolve_task(app, args.task).name
    return run_heavy(app, TOOL, args, label, args.a.model,
                     f"compare_features {args.a.model} vs {args.b.model} on {label}", _compare, CompareFeaturesOutput,
                     progress)


COMPARE_FEATURES = ToolSpec(
    TOOL, fn=compare_features, input_model=CompareFeaturesInput, output_model=CompareFeaturesOutput, progress=True,
    description=(
        "Do two sides carry the same features — two models (SmolLM2 vs Gemma), two layers, two SAE seeds? Each side: "
        "{model, source: resid | neurons | sae | das, layer (int, list or 'a:b'), site}. Activations are aligned "
        "example by example: on a task at a named position resolved per model (works across tokenizers), or on a "
        "corpus token by token (same tokenizer) or at shared character ends. Reports linear CKA and SVCCA with "
        "permutation p-values (and a layer x layer CKA map for layer ranges), one-to-one feature matches (Hungarian "
        "on |correlation|) with p-values against a null of the whole matching (shuffled examples or rotated basis), "
        "the Benjamini-Hochberg set at `fdr` and how many matches chance alone gives, decoder cosines when both "
        "sides share a space, an optional noise ceiling (another SAE seed of A), and, on a task, causal "
        "preservation: the same intervention on each matched feature, effect on each model's own metric with 95% "
        "CIs — validated (same sign, both CIs exclude 0), correlational only, or contradicted. Top matches come with "
        "top-activating contexts per side. Runs as a job."))
