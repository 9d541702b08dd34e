"""Tool logit_lens: what would each layer predict if it were the last? The answer's probability, rank and the task
metric per layer and named position, read through the final norm and the unembedding (or a trained tuned lens)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field

from .. import lazy
from ..methods.core import Progress
from ..methods.core.footprint import Footprint
from ..tasks.causal import TaskSpecError
from ..tasks.dataset import encode_prompt, encode_text
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import (
                     DEFAULT_MODEL,
                     MaybeFloat,
                     Stat,
                     check_fits_model,
                     dataset,
                     parse_layers,
                     per_token_metric,
                     resolve_task,
                     task_metric,
                     validate_or_raise,
)
from .errors import ToolError, field_error

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
torch = lazy("torch")
plots = lazy("mcp_interp.artifacts.plots")
lens = lazy("mcp_interp.methods.lens")
features = lazy("mcp_interp.methods.features")

TOOL = "logit_lens"
MAX_PROMPTS = 64


class LogitLensInput(HeavyInput):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    task: str | None = Field(None, description="Task whose prompts are read (list_tasks). Give `task` or `prompts`.")
    prompts: list[str] | None = Field(None, min_length=1, max_length=MAX_PROMPTS, description="Free prompts instead "
                                      "of a task: top tokens per layer at the last token (and `answer`'s rank/prob).")
    answer: str | None = Field(None, description="prompts: the expected next token (mind the leading space, e.g. "
                               "' Paris'); its first token is scored.")
    positions: list[str] | None = Field(None, description="task: named positions to read (default: the task's named "
                                        "positions and END, the last token).")
    layers: int | list[int] | str | None = Field(
        None, description="Lens points: l < n_layers reads resid_pre of block l, l = n_layers the last block's "
        "resid_post (the model's own logits). An int, a list, or 'a:b' / 'a:b:step' (b excluded); default all.")
    metric: Literal["logit_diff", "prob", "prob_diff"] | None = Field(
        None, description="task: the metric read at each point (default: the task's; logit_diff = answer vs "
        "counterfactual answer, prob_diff for answer-set tasks).")
    counterfactual: str | None = Field(None, description="task: generator giving the counterfactual answer of "
                                       "logit_diff (default: the task's first that changes the answer).")
    n: int = Field(16, ge=1, le=512, description="task: number of prompts.")
    top_k: int = Field(10, ge=1, le=50, description="Top tokens per layer at END (by mean probability).")
    lens: Literal["logit", "tuned"] = Field(
        "logit", description="logit: read the stream directly; tuned: through an affine translator per layer "
        "(identity-initialised, trained here on `corpus` to minimise KL to the final distribution; held-out KL of "
        "both lenses reported).")
    corpus: Literal["shakespeare", "random", "task"] = Field(
        "shakespeare", description="tuned: training text (shakespeare plays; random tokens or the task's prompts for "
        "toy models).")
    tuned_tokens: int = Field(4096, ge=64, le=1_000_000, description="tuned: corpus tokens (20% of windows held "
                              "out).")
    tuned_context: int = Field(32, ge=2, le=1024, description="tuned: tokens per corpus window.")
    tuned_steps: int = Field(200, ge=1, le=20_000, description="tuned: Adam steps (batches of 64 tokens).")


class TopToken(BaseModel):
    token: str
    id: int
    mean_prob: float = Field(description="mean over prompts of its probability at END")


class LensLayer(BaseModel):
    layer: int = Field(description="lens point (see `layers`)")
    hook: str
    metric: dict[str, Stat | None] | None = Field(None, description="per position: the task metric read there")
    answer_prob: dict[str, Stat | None] | None = Field(None, description="per position: P(answer)")
    answer_rank: dict[str, Stat | None] | None = Field(None, description="per position: rank of the answer (1 = top; "
                                                       "ties count against it)")
    top1_share: MaybeFloat = Field(None, description="share of prompts whose answer is top-1 at END")
    top_tokens: list[TopToken] = Field(description="at END, by mean probability")
    kl_logit_lens: MaybeFloat = Field(None, description="tuned: held-out KL(final || logit lens), nats/token")
    kl_tuned_lens: MaybeFloat = Field(None, description="tuned: held-out KL(final || tuned lens), nats/token")


class LogitLensResult(RunResult):
    run_id: str
    model: str
    task: str | None
    n: int
    lens: str
    metric: str | None
    positions: list[str]
    first_layer: int | None = Field(description="first lens point where the answer is top-1 at END for at least half "
                                    "the prompts (null if never, or no answer)")
    first_hook: str | None
    layers: list[LensLayer]
    prompt_tops: list[list[str]] | None = Field(None, description="prompts: each prompt's top-1 token at END per "
                                                "layer")


class LogitLensOutput(HeavyOutput):
    result: LogitLensResult | None = None


def _inputs(run: ToolRun, args: LogitLensInput, lm):
    """(spec or None, LensInputs, the task's dataset or None, warnings)."""
    tok, warns = lm.tokenizer, []
    if args.task is None:
        if args.positions and args.positions != ["END"]:
            raise field_error("positions", "free prompts have only END (the last token)", "leave positions out")
        if args.metric is not None or args.counterfactual is not None:
            raise field_error("metric" if args.metric is not None else "counterfactual", "free prompts have no "
                              "counterfactual answer or task metric (answer's probability and rank only)",
                              "pass task=... for a metric, or leave it out")
        try:
            toks = [encode_prompt(tok, p, "prompts")[0] for p in args.prompts]
            ans = encode_text(tok, args.answer, "answer")[0] if args.answer is not None else None
        except TaskSpecError as e:
            raise ToolError(f"{e.field}: {e.message}") from None
        if any(not t for t in toks) or ans == []:
            raise field_error("prompts" if ans != [] else "answer", "encodes to no tokens", "give non-empty text")
        check_fits_model(toks, "prompts", lm.model, args.model)
        if ans is not None and len(ans) > 1:
            warns.append(f"answer {args.answer!r} is {len(ans)} tokens; only its first, {tok.decode(ans[:1])!r}, is "
                         f"scored")
        pos = np.array([[len(t) - 1] for t in toks])
        return None, lens.LensInputs(toks, pos, ["END"], None if ans is None else [ans[0]] * len(toks)), None, warns
    spec = resolve_task(run.app, args.task)
    validate_or_raise(spec, tok, args.model)
    name = per_token_metric(spec, args.metric, TOOL)
    ds = dataset(spec, tok, args.n, args.seed, args.counterfactual, answer_changes=name == "logit_diff")
    check_fits_model([e.tokens for e in ds.examples], spec.name, lm.model, args.model)  # memory: lens_footprint
    names = args.positions or ds.position_names
    unknown = [p for p in names if p not in ds.position_names]
    if unknown:
        raise field_error("positions", f"{unknown} are not positions of task {spec.name!r}",
                          f"pick from {ds.position_names}")
    names = [*dict.fromkeys([*names, "END"])]
    pos = np.array([[e.positions[q] for q in names] for e in ds.examples])
    if (pos < 0).any():
        warns.append(f"positions {sorted({names[j] for j in np.argwhere(pos < 0)[:, 1]})} do not occur in every "
                     f"prompt; their cells average the prompts where they do")
    return spec, lens.LensInputs([e.tokens for e in ds.examples], pos, names, [e.answer_id for e in ds.examples],
                                 task_metric(name, ds)), ds, warns


def _tuned(run: ToolRun, args: LogitLensInput, lm, points: list[int]):
    """The tuned lens's training spec (corpus windows), refused first if it would not fit in memory."""
    cfg = lm.model.cfg
    k = sum(p < cfg.n_layers for p in points)
    refuse_oversized(Footprint(lambda tuned_tokens: lens.tuned_footprint(cfg.d_model, cfg.d_vocab_out, k,
                                                                          tuned_tokens, 64),
                               {"tuned_tokens": args.tuned_tokens}), "training a tuned lens")
    ctx = min(args.tuned_context, cfg.n_ctx)
    try:
        if args.corpus == "task":
            if args.task is None:
                raise ToolError("corpus: 'task' needs `task`; use 'shakespeare' or 'random' with free prompts.")
            spec = resolve_task(run.app, args.task)
            ds = dataset(spec, lm.tokenizer, max(8, -(-args.tuned_tokens // 8)), args.seed + 1, None, up_to=True)
            wins = [e.tokens for e in ds.examples]
        elif args.corpus == "random":
            wins = features.random_windows(cfg.d_vocab, ctx, args.tuned_tokens, args.seed)
        else:
            docs = [p.read_text(errors="replace") for p in features.shakespeare_files()]
            wins = features.token_windows(docs, lm.tokenizer, ctx, args.tuned_tokens, args.seed)
    except (FileNotFoundError, ValueError) as e:
        raise field_error("corpus", str(e), "corpus='random' or 'task' for a toy model") from None
    return lens.TunedSpec(wins, steps=args.tuned_steps, seed=args.seed)


def _logit_lens(run: ToolRun, args: LogitLensInput) -> tuple[LogitLensResult, dict]:
    if (args.task is None) == (args.prompts is None):
        raise ToolError("task: give either `task` or `prompts` (a list of strings), not both or neither.")
    if args.answer is not None and args.task is not None:
        raise field_error("answer", "a task supplies its own answers", "leave answer out, or use prompts")
    lm = run.load(args.model)
    L = lm.model.cfg.n_layers
    points = list(range(L + 1)) if args.layers is None else parse_layers(args.layers, L + 1, "layers")
    spec, inputs, ds, warns = _inputs(run, args, lm)
    seq, key = max(len(t) for t in inputs.tokens), "n" if spec else "prompts"
    refuse_oversized(Footprint(lambda **v: lens.lens_footprint(lm.model.cfg, v[key], seq, len(points),
                                                                len(inputs.position_names)),
                               {key: len(inputs.tokens)}), f"the lens at {len(points)} layers on up to {seq} tokens")
    tuned = _tuned(run, args, lm, points) if args.lens == "tuned" else None
    with lm.use():
        try:
            res = lens.logit_lens(lm.model, inputs, points, top_k=args.top_k, tuned=tuned, progress=run.span())
        except ValueError as e:
            raise (field_error("corpus", str(e), "more corpus tokens (tuned_tokens)") if tuned
                   else ToolError(f"prompts: {e}")) from None
    if spec is not None:
        run.open(spec, args.model, lm, args.seed)
    else:
        run.open_untasked("prompts", args.model, lm, args.seed)
    run.publish("result.json", "manifest.json")
    rows = _rows(res, lm.tokenizer, args.seed)
    _store(run, args, res, spec, lm.tokenizer)
    first = res.first_layer
    result = LogitLensResult(
        summary=_summary(args, res, rows, spec), warnings=warns + _warnings(res, lm.model, args),
        files=run.files, cost=run.cost(res.cost), run_id=run.run_id, model=args.model,
        task=spec.name if spec else None, n=len(inputs.tokens), lens=res.lens, metric=res.metric_name,
        positions=res.position_names, first_layer=first, first_hook=lens.point_hook(lm.model, first)
        if first is not None else None, layers=rows,
        prompt_tops=None if spec else [[lm.tokenizer.decode([int(t)]) for t in res.end_top[:, i]]
                                       for i in range(len(inputs.tokens))])
    return result, {"first_layer": first, "lens": res.lens}


def _rows(res, tokenizer, seed: int) -> list[LensLayer]:
    stats = {k: res.cell_stats(k, seed) for k in ("metric", "prob", "rank") if getattr(res, k) is not None}
    share = res.top1_share()
    kl = res.tuned

    def per_pos(name: str, a: int) -> dict | None:
        return None if name not in stats else {q: (Stat(**s) if s else None)
                                               for q, s in zip(res.position_names, stats[name][a])}
    return [LensLayer(layer=p, hook=res.hooks[a], metric=per_pos("metric", a), answer_prob=per_pos("prob", a),
                      answer_rank=per_pos("rank", a), top1_share=None if share is None else float(share[a]),
                      top_tokens=[TopToken(token=tokenizer.decode([int(t)]), id=int(t), mean_prob=float(v))
                                  for t, v in zip(res.top_ids[a], res.top_probs[a])],
                      kl_logit_lens=kl.kl_logit.get(p) if kl else None,
                      kl_tuned_lens=kl.kl_tuned.get(p) if kl else None)
            for a, p in enumerate(res.points)]


def _store(run: ToolRun, args: LogitLensInput, res, spec, tokenizer) -> None:
    arrays = {k: torch.as_tensor(getattr(res, k).astype(np.float32))
              for k in ("metric", "prob", "rank") if getattr(res, k) is not None}
    arrays["end_top"] = torch.as_tensor(res.end_top)
    run.write_tensors("lens.safetensors", arrays)  # [layers, positions, prompts]
    if res.tuned is not None:
        run.write_tensors("tuned_lens.safetensors", res.tuned.tensors())
        run.write_json("tuned_lens_curve.json", {"train_kl": res.tuned.curve, "train_tokens": res.tuned.train_tokens,
                                                 "held_out_tokens": res.tuned.held_out_tokens})
    label = spec.name if spec else f"{len(res.end_top[0])} prompts"
    what = res.metric_name or ("P(answer)" if res.prob is not None else "P(top-1 token)")
    if res.metric is not None:
        grid, cols = res.cell_means("metric"), res.position_names
    else:  # free prompts: layer x prompt
        grid = res.prob[:, 0] if res.prob is not None else res.end_top_prob
        cols = [f"p{i}" for i in range(grid.shape[1])]
    run.save_figure("lens_heatmap.png", plots.heatmap(
        grid, row_labels=res.labels, col_labels=cols, title=f"{res.lens} lens: {what} on {label} ({args.model})",
        cbar_label=what, center_zero=res.metric is not None and what == "logit_diff", xlabel="position" if spec
        else "prompt", ylabel="layer"), main=True)
    if res.prob is not None:
        e = res.end
        cs = res.cell_stats("prob", args.seed)
        m = [c[e]["mean"] for c in cs]
        run.save_figure("answer_by_layer.png", plots.line_plot(
            res.points, {"P(answer) at END": m, "share top-1 at END": list(res.top1_share())},
            ci={"P(answer) at END": ([c[e]["ci95"][0] for c in cs], [c[e]["ci95"][1] for c in cs])},
            title=f"{res.lens} lens: the answer at END by layer ({args.model})", xlabel="layer (lens point)",
            ylabel="probability / share"))
    if res.tuned is not None:
        t = res.tuned
        run.save_figure("tuned_kl.png", plots.line_plot(
            t.points, {"logit lens": list(t.kl_logit.values()), "tuned lens": list(t.kl_tuned.values())},
            title="held-out KL(final || lens)", xlabel="layer", ylabel="nats / token"))


def _summary(args: LogitLensInput, res, rows: list[LensLayer], spec) -> str:
    first, L = res.first_layer, res.points[-1]
    if res.prob is None:
        top = rows[-1].top_tokens[0]
        head = (f"No answer given: at the last lens point the top token is {top.token!r} (mean P {top.mean_prob:.2f}).")
    elif first is None:
        head = f"The answer never becomes top-1 at END for half the prompts at the layers read ({res.lens} lens)."
    else:
        head = (f"The answer first becomes top-1 at END at layer {first} ({res.hooks[res.points.index(first)]}) for "
                f"{rows[res.points.index(first)].top1_share:.0%} of prompts ({res.lens} lens).")
    if res.metric is not None:
        ms = [r.metric["END"] for r in rows]
        head += (f" {res.metric_name} at END: {ms[0].mean:.3g} at layer {res.points[0]} -> {ms[-1].mean:.3g} at layer "
                 f"{L}.")
    if res.tuned is not None:
        better = sum(res.tuned.kl_tuned[p] < res.tuned.kl_logit[p] for p in res.tuned.points)
        head += f" Tuned lens: lower held-out KL than the logit lens at {better} of {len(res.tuned.points)} layers."
    if spec is not None:
        nxt = (f" Next: locate(task='{spec.name}', model='{args.model}') to find which components write the answer "
               f"between layer {max(0, (first or L) - 1)} and {first or L}.")
    else:
        nxt = (f" Next: define_task for these prompts, then logit_lens(task=..., model='{args.model}') for the metric "
               f"per named position with CIs.")
    return head + nxt


def _warnings(res, model, args: LogitLensInput) -> list[str]:
    out = []
    if model.cfg.normalization_type is not None and args.lens == "logit":
        out.append("the logit lens normalises each layer's stream with the final norm (scale from that stream); early "
                   "layers are not in the unembedding's basis, so their predictions understate what they hold "
                   "(lens='tuned' corrects for it)")
    if res.tuned is not None:
        worse = [p for p in res.tuned.points if res.tuned.kl_tuned[p] >= res.tuned.kl_logit[p]]
        if worse:
            out.append(f"the tuned lens is not better than the logit lens on held-out text at layers {worse}; train "
                       f"longer (tuned_steps) or on more tokens")
        if res.tuned.held_out_tokens < 256:
            out.append(f"held-out KL rests on {res.tuned.held_out_tokens} tokens only")
    if res.metric is not None and len(res.end_top[0]) < 8:
        out.append("fewer than 8 prompts: the CIs are wide")
    return out


def logit_lens(app: AppContext, args: LogitLensInput, progress: Progress | None = None) -> LogitLensOutput:
    label = resolve_task(app, args.task).name if args.task else "prompts"  # an unknown task fails before a job
    return run_heavy(app, TOOL, args, label, args.model, f"{args.lens} lens on {label} of {args.model}",
                     _logit_lens, LogitLensOutput, progress)


LOGIT_LENS = ToolSpec(
    TOOL, fn=logit_lens, input_model=LogitLensInput, output_model=LogitLensOutput, progress=True,
    description=(
        "What would each layer predict if it were the last? Reads the residual stream at every layer (resid_pre of "
        "each block and the last resid_post) through the final norm (its scale from that stream) and the "
        "unembedding, at the task's named positions: the answer's probability and rank and the task metric with 95% "
        "bootstrap CIs, the top tokens at END, and first_layer where the answer becomes top-1. Free prompts (with "
        "an optional answer) instead of a task. lens='tuned' trains an affine translator per layer on a corpus "
        "and reports both lenses' held-out KL. Runs as a job; stores a layer x position heatmap."))
