"""Tool steer: generate text with an intervention held at a site (a feature's direction, a mean-difference vector,
ablated heads) at several strengths, beside an equal-norm random control; with a task, how the answer's metric
and top-1 move (methods/steering)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field

from .. import lazy
from ..methods.core import Progress, Site
from ..methods.core.footprint import Footprint
from ..tasks.dataset import encode_prompt
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import (
    DEFAULT_MODEL,
    MaybeFloat,
    Stat,
    check_fits_model,
    dataset,
    per_token_metric,
    resolve_task,
    task_metric,
    validate_or_raise,
)
from .errors import ToolError
from .find_features import feature_source

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
torch = lazy("torch")
plots = lazy("mcp_interp.artifacts.plots")
steering = lazy("mcp_interp.methods.steering")

TOOL = "steer"
MAX_NEW = 64
FiniteAlpha = Annotated[float, Field(allow_inf_nan=False)]


class Head(BaseModel):
    layer: int = Field(..., ge=0)
    head: int = Field(..., ge=0)


class Intervention(BaseModel):
    """What is held at the site. feature: alpha x a feature's decoder direction scaled to norm 1 (alpha in units of
    the site's activation; compare with the result's site_norm). mean_diff: alpha x (mean of the site at the last
    token of `positive` - the same for `negative`), the raw vector. ablate_heads: the heads' outputs (z) set to 0 or
    to their mean over the prompts; alphas are ignored."""

    kind: Literal["feature", "mean_diff", "ablate_heads"] = Field(..., description="feature / mean_diff / "
                                                                  "ablate_heads (see above).")
    source: Literal["sae", "das", "probe", "neurons"] = Field("sae", description="feature: where the feature comes "
                                                              "from (a train_sae/load_sae run or sae-lens directory, "
                                                              "a train_das run, a probe run, or MLP neurons).")
    sae: str | None = Field(None, description="source='sae': a train_sae / load_sae run id, "
                               "`<train_transcoders run id>/layers.L.mlp` (a transcoder), or a sae-lens directory.")
    das_run: str | None = Field(None, description="source='das': a train_das run id.")
    probe_run: str | None = Field(None, description="source='probe': a probe run id.")
    index: int | None = Field(None, ge=0, description="feature: the latent / DAS direction / probe class / neuron.")
    layer: int | None = Field(None, ge=0, description="probe: its layer; neurons: the MLP's layer; mean_diff: the "
                              "site's layer.")
    site: Literal["resid_pre", "resid_post", "attn_out", "mlp_out"] = Field(
        "resid_pre", description="mean_diff: the site whose activations are averaged and steered.")
    positive: list[str] = Field([], max_length=512, description="mean_diff: prompts of the side added with alpha > 0.")
    negative: list[str] = Field([], max_length=512, description="mean_diff: prompts of the side subtracted.")
    heads: list[Head] = Field([], max_length=64, description="ablate_heads: the heads to ablate.")
    ablation: Literal["zero", "mean"] = Field("zero", description="ablate_heads: zero, or the head's mean output "
                                              "over the prompts' tokens.")


class SteerInput(HeavyInput):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    task: str | None = Field(None, description="Task name: its prompts, and the answer's metric and flip rate under "
                             "the intervention. Give a task or prompts.")
    prompts: list[str] = Field([], max_length=64, description="Prompts to continue (without a task).")
    intervention: Intervention
    alphas: list[FiniteAlpha] = Field([-8.0, -4.0, 0.0, 4.0, 8.0], min_length=1, max_length=16,
                                      description="Strengths (finite); 0 reproduces the baseline exactly.")
    positions: list[str] = Field(["last"], min_length=1, description="['all'] (every token, generated ones "
                                 "included), ['last'] (the prompt's last token and every generated token), or task "
                                 "position names (prompt tokens only), e.g. ['END'].")
    max_new_tokens: int = Field(16, ge=0, le=MAX_NEW, description="Tokens to generate per prompt (no KV cache: the "
                                "prefix is re-run each step).")
    n_generate: int = Field(4, ge=0, le=16, description="Prompts whose continuations are generated and shown.")
    n: int = Field(32, ge=2, le=1024, description="Task examples the metric is read on.")
    counterfactual: str | None = Field(None, description="Task generator whose answer is the counterfactual answer "
                                       "(default: the task's first).")
    sample: bool = Field(False, description="Sample (seeded multinomial at temperature) instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature (sample=true).")


class Continuation(BaseModel):
    alpha: float
    steered: str
    control: str


class GenerationRow(BaseModel):
    prompt: str
    baseline: str
    by_alpha: list[Continuation]


class AlphaRow(BaseModel):
    alpha: float
    metric: Stat | None = Field(description="the task metric at the prompt's last token under the intervention")
    flip_rate: Stat = Field(description="share of prompts whose top-1 is not the answer (Wilson 95% CI)")
    to_counterfactual: Stat | None = Field(description="share whose top-1 is the counterfactual answer")
    control_metric: Stat | None
    control_flip_rate: Stat
    control_to_counterfactual: Stat | None
    divergence: MaybeFloat = Field(description="share of generated tokens differing from the baseline continuation")
    control_divergence: MaybeFloat


class SteerResult(RunResult):
    run_id: str
    model: str
    task: str | None
    kind: str
    intervention: str = Field(description="what was held, in words")
    hook: str
    positions: list[str]
    alphas: list[float]
    alpha_unit: str = Field(description="what alpha multiplies")
    vector_norm: MaybeFloat = Field(description="norm of the added vector (1 for a feature's unit direction)")
    site_norm: MaybeFloat = Field(description="mean norm of the site's activation over the prompts' tokens (the "
                                  "ablated heads' outputs for ablate_heads): read alpha x vector_norm against it")
    control: str
    control_heads: list[Head] = []
    n: int
    metric: str | None
    baseline_metric: Stat | None
    baseline_accuracy: Stat | None = Field(description="share of prompts whose top-1 is the answer, no intervention")
    by_alpha: list[AlphaRow]
    generations: list[GenerationRow]
    max_new_tokens: int
    sample: bool


class SteerOutput(HeavyOutput):
    result: SteerResult | None = None


def _stat(d: dict | None) -> Stat | None:
    return None if d is None else Stat(**d)


def _intervention(run: ToolRun, lm, iv: Intervention, encode) -> tuple[object, str]:
    """The method's intervention and a description, with ToolErrors naming `intervention.<field>`."""
    cfg = lm.model.cfg
    if iv.kind == "feature":
        kw = {"probe_run": iv.probe_run, "layer": iv.layer} if iv.source == "probe" else {
            "sae": iv.sae, "layer": iv.layer, "das_run": iv.das_run}
        source = feature_source(run.app, lm, iv.source, field="intervention.", **kw)
        if iv.index is None or not 0 <= iv.index < source.n:
            raise ToolError(f"intervention.index: {iv.index} is not a feature of this {iv.source} source (0.."
                            f"{source.n - 1}). Fix: pass an index in that range.")
        site = getattr(source, "write_site", source.site)
        return (steering.AddVector(site, source.direction(iv.index), unit=True),
                f"{source.names()[iv.index]} ({iv.source}) unit direction")
    if iv.kind == "mean_diff":
        if iv.layer is None or not 0 <= iv.layer < cfg.n_layers:
            raise ToolError(f"intervention.layer: mean_diff needs the site's layer (0..{cfg.n_layers - 1}).")
        if not iv.positive or not iv.negative:
            raise ToolError("intervention.positive: mean_diff needs prompts in both `positive` and `negative`.")
        if iv.site == "mlp_out" and cfg.attn_only:
            raise ToolError("intervention.site: mlp_out does not exist in this model (attention-only: no MLP). "
                            "Fix: resid_pre, resid_post or attn_out.")
        pos, neg = encode(iv.positive, "intervention.positive"), encode(iv.negative, "intervention.negative")
        return (steering.MeanDiff(Site(iv.site, iv.layer), pos, neg),
                f"mean difference of {len(pos)} positive and {len(neg)} negative prompts")
    bad = [f"L{h.layer}H{h.head}" for h in iv.heads if h.layer >= cfg.n_layers or h.head >= cfg.n_heads]
    if not iv.heads or bad:
        raise ToolError(f"intervention.heads: {'give at least one head' if not iv.heads else f'{bad} do not exist'} "
                        f"(layers 0..{cfg.n_layers - 1}, heads 0..{cfg.n_heads - 1}).")
    heads = list(dict.fromkeys((h.layer, h.head) for h in iv.heads))
    return (steering.HeadAblation(heads, iv.ablation),
            f"{iv.ablation}-ablation of {', '.join(f'L{a}H{b}' for a, b in heads)}")


def _prompts(run: ToolRun, lm, args: SteerInput):
    """(spec or None, token lists, positions for the method, answers, cf answers, metric, metric name, texts)."""
    if args.task is None:
        toks = _encoder(lm, args.model)(args.prompts, "prompts")
        if args.positions not in (["all"], ["last"]):
            raise ToolError("positions: without a task only ['all'] or ['last'] (named positions are the task's).")
        return None, toks, args.positions[0], None, None, None, None, args.prompts
    spec = resolve_task(run.app, args.task)
    validate_or_raise(spec, lm.tokenizer, args.model)
    name = per_token_metric(spec, None, TOOL)
    ds = dataset(spec, lm.tokenizer, args.n, args.seed, args.counterfactual, answer_changes=name == "logit_diff",
                 model=lm.model, model_id=args.model)
    positions: object = args.positions[0]
    if args.positions not in (["all"], ["last"]):
        unknown = [p for p in args.positions if p not in ds.position_names]
        if unknown:
            raise ToolError(f"positions: {unknown} are not positions of {spec.name!r} ({ds.position_names}); or "
                            f"pass ['all'] / ['last'].")
        positions = [[e.positions[p] for p in args.positions] for e in ds.examples]
        if any(i < 0 for row in positions for i in row):
            raise ToolError(f"positions: {args.positions} do not resolve on every prompt of {spec.name!r}.")
    return (spec, [e.tokens for e in ds.examples], positions, [e.answer_id for e in ds.examples],
            [e.cf_answer_id for e in ds.examples], task_metric(name, ds), name, [e.prompt for e in ds.examples])


def _encoder(lm, model_id: str):
    def encode(texts: list[str], field: str) -> list[list[int]]:
        if not texts:
            raise ToolError(f"{field}: give at least one prompt (or a task).")
        try:
            toks = [encode_prompt(lm.tokenizer, t, field)[0] for t in texts]
        except Exception as e:
            raise ToolError(f"{field}: cannot encode for {model_id} ({e}).") from None
        if any(not t for t in toks):
            raise ToolError(f"{field}: an empty prompt.")
        check_fits_model(toks, field, lm.model, model_id)
        return toks
    return encode


def _steer(run: ToolRun, args: SteerInput) -> tuple[SteerResult, dict]:
    lm = run.load(args.model)
    spec, toks, positions, answers, cfs, metric, metric_name, texts = _prompts(run, lm, args)
    method_iv, what = _intervention(run, lm, args.intervention, _encoder(lm, args.model))
    cfg = lm.model.cfg
    longest = max(len(t) for t in toks)
    if longest + args.max_new_tokens > cfg.n_ctx:
        raise ToolError(f"max_new_tokens: prompts of up to {longest} tokens plus {args.max_new_tokens} new ones "
                        f"exceed the model's context of {cfg.n_ctx}. Fix: max_new_tokens at most "
                        f"{max(cfg.n_ctx - longest, 0)}.")
    seq = longest + args.max_new_tokens
    refuse_oversized(Footprint(lambda n: steering.steering_footprint(cfg, n, seq, len(args.alphas)), {"n": len(toks)}),
                     "steering forwards")
    with lm.use():
        try:
            study = steering.steer(lm.model, method_iv, toks, args.alphas, positions, args.max_new_tokens,
                                   args.n_generate, args.sample, args.temperature, args.seed, answers, cfs, metric,
                                   progress=run.span(), should_cancel=run.should_cancel)
        except ValueError as e:
            raise ToolError(f"intervention: {e}.") from None
    if spec is not None:
        run.open(spec, args.model, lm, args.seed)
    else:
        run.open_untasked("prompts", args.model, lm, args.seed)
    run.publish("result.json")
    rows = _alpha_rows(study)
    gens = _generations(study, texts, lm.tokenizer)
    _files(run, args, study, rows, gens, spec)
    unit = ("the raw mean-difference vector" if study.kind == "mean_diff" else "nothing (ablation has no strength)"
            if study.kind == "ablate_heads" else "the feature's unit direction")
    result = SteerResult(
        run_id=run.run_id, model=args.model, task=spec.name if spec else None, kind=study.kind, intervention=what,
        hook=study.hook, positions=args.positions, alphas=study.alphas, alpha_unit=unit,
        vector_norm=study.vector_norm, site_norm=study.site_norm, control=study.control,
        control_heads=[Head(layer=a, head=b) for a, b in study.control_heads], n=len(toks), metric=metric_name,
        baseline_metric=_stat((study.baseline or {}).get("metric")),
        baseline_accuracy=_stat((study.baseline or {}).get("accuracy")), by_alpha=rows, generations=gens,
        max_new_tokens=args.max_new_tokens, sample=args.sample, summary=_summary(args, study, rows, what, spec),
        warnings=_warnings(args, study, rows), files=run.files, cost=run.cost({"forwards": study.forwards}))
    best = max(rows, key=lambda r: r.flip_rate.mean or 0.0)
    return result, {"kind": study.kind, "best_alpha": best.alpha, "flip_rate": best.flip_rate.mean,
                    "control_flip_rate": best.control_flip_rate.mean}


def _alpha_rows(study) -> list[AlphaRow]:
    rows = []
    for k, a in enumerate(study.alphas):
        s = (study.summary.get("steered") or [None] * len(study.alphas))[k] or {}
        c = (study.summary.get("control") or [None] * len(study.alphas))[k] or {}
        nan = {"mean": None, "ci95": [None, None], "n": 0}
        rows.append(AlphaRow(
            alpha=a, metric=_stat(s.get("metric")), flip_rate=Stat(**s.get("flip", nan)),
            to_counterfactual=_stat(s.get("to_cf")), control_metric=_stat(c.get("metric")),
            control_flip_rate=Stat(**c.get("flip", nan)), control_to_counterfactual=_stat(c.get("to_cf")),
            divergence=(study.divergence.get("steered") or [None] * len(study.alphas))[k],
            control_divergence=(study.divergence.get("control") or [None] * len(study.alphas))[k]))
    return rows


def _generations(study, texts: list[str], tok) -> list[GenerationRow]:
    return [GenerationRow(prompt=texts[g["prompt"]], baseline=tok.decode(g["baseline"]),
                          by_alpha=[Continuation(alpha=a, steered=tok.decode(g["steered"][k]),
                                                 control=tok.decode(g["control"][k]))
                                    for k, a in enumerate(study.alphas)]) for g in study.generations]


def _files(run: ToolRun, args: SteerInput, study, rows: list[AlphaRow], gens: list[GenerationRow], spec) -> None:
    run.write_json("generations.json", [g.model_dump() for g in gens])
    tensors = {f"{k}_vector": v for k, v in study.vectors.items()}
    for k, v in study.metric.items():
        tensors[f"{k}_metric"] = torch.as_tensor(v, dtype=torch.float32)
        tensors[f"{k}_top1"] = torch.as_tensor(study.top1[k])
    if tensors:
        run.write_tensors("steering.safetensors", tensors)
    what = f"{study.kind} at {study.hook} ({', '.join(args.positions)}), {args.model}"
    x = study.alphas
    if study.metric:
        ys = {"steered": [r.metric.mean if r.metric else np.nan for r in rows],
              "random control": [r.control_metric.mean if r.control_metric else np.nan for r in rows]}
        ci = {"steered": ([r.metric.ci95[0] for r in rows], [r.metric.ci95[1] for r in rows]),
              "random control": ([r.control_metric.ci95[0] for r in rows], [r.control_metric.ci95[1] for r in rows])}
        fig = plots.line_plot(x, ys, title=f"{spec.name}: task metric under steering (95% CI)\n{what}",
                              xlabel="alpha", ylabel="metric", ci=ci, hlines={"no intervention":
                                                                              study.baseline["metric"]["mean"]})
        run.save_figure("metric.png", fig, main=True)
        fig = plots.line_plot(x, {"steered": [r.flip_rate.mean for r in rows],
                                  "random control": [r.control_flip_rate.mean for r in rows]},
                              title=f"answer flip rate (Wilson 95% CI)\n{what}", xlabel="alpha", ylabel="flip rate",
                              ci={"steered": tuple(zip(*[r.flip_rate.ci95 for r in rows])),
                                  "random control": tuple(zip(*[r.control_flip_rate.ci95 for r in rows]))})
        run.save_figure("flip_rate.png", fig)
    elif study.divergence:
        fig = plots.line_plot(x, {"steered": [r.divergence for r in rows],
                                  "random control": [r.control_divergence for r in rows]},
                              title=f"generated tokens differing from the baseline\n{what}", xlabel="alpha",
                              ylabel="share of tokens")
        run.save_figure("divergence.png", fig, main=True)


def _summary(args: SteerInput, study, rows: list[AlphaRow], what: str, spec) -> str:
    head = f"Held {what} at {study.hook} ({', '.join(args.positions)}; site norm {study.site_norm:.2g}). "
    model = f"model='{args.model}'"
    if not study.metric:
        k = int(np.argmax([r.divergence or 0 for r in rows])) if rows and study.divergence else 0
        tail = (f"At alpha {rows[k].alpha:g}, {rows[k].divergence or 0:.0%} of generated tokens differ from the "
                f"baseline (random control {rows[k].control_divergence or 0:.0%}). " if study.divergence else "")
        return head + tail + (f"Next: steer({model}, task=<a task>, ...) to measure how often the answer flips, with "
                              f"CIs.")
    best = max(rows, key=lambda r: (r.flip_rate.mean or 0) - (r.control_flip_rate.mean or 0))
    f, c = best.flip_rate, best.control_flip_rate
    tail = (f"At alpha {best.alpha:g} the answer flips on {f.mean:.0%} [{f.ci95[0]:.0%}, {f.ci95[1]:.0%}] of "
            f"{f.n} prompts" + (f" ({best.to_counterfactual.mean:.0%} to the counterfactual answer)"
                                if best.to_counterfactual else "")
            + f"; the control flips {c.mean:.0%} [{c.ci95[0]:.0%}, {c.ci95[1]:.0%}]. "
            + (f"Metric {study.baseline['metric']['mean']:.2f} -> {best.metric.mean:.2f}. " if best.metric else ""))
    if (f.ci95[0] or 0) > (c.ci95[1] or 0):
        nxt = (f"Next: attribute(task='{spec.name}', {model}) to see which components read {study.hook} "
               f"downstream, or steer with positions=[<one named position>] to see where it acts.")
    else:
        top = max(abs(a) for a in study.alphas) or 1.0
        nxt = (f"Next: steer(task='{spec.name}', {model}, alphas=[{-2 * top:g}, {2 * top:g}]) with larger strengths, "
               f"or another feature (find_features).") if study.kind != "ablate_heads" else (
               f"Next: locate(task='{spec.name}', {model}) to find the heads that matter before ablating.")
    return head + tail + nxt


def _warnings(args: SteerInput, study, rows: list[AlphaRow]) -> list[str]:
    w = []
    if study.kind == "ablate_heads" and args.alphas != [1.0]:
        w.append("alphas are ignored for ablate_heads: an ablation has no strength (reported as alpha 1)")
    ablated = len({(h.layer, h.head) for h in args.intervention.heads})
    if study.kind == "ablate_heads" and len(study.control_heads) < ablated:
        w.append(f"the control ablates only {len(study.control_heads)} random heads against {ablated}: too few "
                 f"heads are left to draw an equal control, so the comparison favours the intervention")
    acc = (study.baseline or {}).get("accuracy")
    if acc and acc["mean"] < 0.8:
        w.append(f"the model's top-1 is the answer on only {acc['mean']:.0%} of prompts without intervention, so "
                 f"flip rates start high")
    if study.vector_norm and study.site_norm and max(abs(a) for a in study.alphas) * study.vector_norm > \
            10 * study.site_norm:
        w.append("the largest alpha adds a vector over 10x the site's mean activation norm: text may break for any "
                 "direction (compare the control)")
    if rows and any(r.control_flip_rate.mean and r.control_flip_rate.mean > 0.2 for r in rows):
        w.append("the random control also flips the answer at some alpha: those alphas are too large to be specific")
    if args.sample:
        w.append("sampled continuations: one seeded sample per prompt; alpha 0 equals the baseline sample")
    if args.task is not None and args.max_new_tokens and study.generations:
        w.append(f"continuations are shown for the first {len(study.generations)} prompts only")
    return w


def steer(app: AppContext, args: SteerInput, progress: Progress | None = None) -> SteerOutput:
    if (args.task is None) == (not args.prompts):
        raise ToolError("task: give a task or prompts (not both, not neither). Fix: task='<name>' (list_tasks) or "
                        "prompts=['...'].")
    label = resolve_task(app, args.task).name if args.task else "prompts"
    return run_heavy(app, TOOL, args, label, args.model, f"steer {args.intervention.kind} on {args.model}", _steer,
                     SteerOutput, progress)


STEER = ToolSpec(
    TOOL, fn=steer, input_model=SteerInput, output_model=SteerOutput, progress=True,
    description=(
        "Steer the model: hold an intervention at a site while it generates, at several strengths alpha, and show "
        "baseline and steered continuations side by side. Interventions: add alpha x a feature's unit decoder "
        "direction (SAE / transcoder latent, train_das direction, probe direction, MLP neuron), add alpha x a "
        "mean-difference vector of two prompt sets at a site, or zero/mean-ablate heads (no strength). Positions: "
        "all tokens, the last prompt token and every generated one, or named task positions. Control: a random "
        "direction of the same norm at the same alphas (random other heads for ablation). With a task: the metric "
        "at the answer position (mean, 95% CI) and how often the top-1 leaves the answer / becomes the "
        "counterfactual answer (Wilson CIs), for the intervention and the control. Greedy by default; sample=true "
        "for seeded sampling. Runs as a job."))
