"""Tool attention: where does each head attend from a named position, and which heads prefer one named position
over another?"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from .. import lazy
from ..methods.core import Progress, Site
from ..methods.core.footprint import Footprint
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import DEFAULT_MODEL, MaybeFloat, Stat, check_fits_model, dataset, resolve_task, validate_or_raise
from .errors import ToolError, field_error

if TYPE_CHECKING:
    from ..methods.attention import AttentionReport
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
torch = lazy("torch")
plots = lazy("mcp_interp.artifacts.plots")
head_attention, attention_footprint = lazy("mcp_interp.methods.attention", "head_attention", "attention_footprint")

TOOL = "attention"
END = "END"


class AttentionInput(HeavyInput):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    task: str = Field(..., description="Task name (list_tasks / define_task); it must name positions.")
    heads: list[str] | None = Field(None, min_length=1, max_length=4096,
                                    description="Heads to read, e.g. ['L9H9', 'L10H0'] (query heads under GQA). "
                                    "Default: every head of `layers`, or of the model.")
    layers: list[int] | None = Field(None, min_length=1, max_length=1024,
                                     description="Instead of `heads`: every head of these layers.")
    from_position: str = Field(END, description="The query position: a named position of the task or END (the "
                               "last token, where the answer is predicted).")
    to_positions: list[str] | None = Field(None, min_length=1, max_length=64,
                                           description="Key positions to report (named positions of the task, "
                                           "END). Default: all the task's named positions.")
    prefer: list[str] | None = Field(None, min_length=2, max_length=2,
                                     description="Two named positions [a, b], e.g. ['IO', 'S1']: rank heads by the "
                                     "mean paired difference attention(a) - attention(b) over prompts. Default: "
                                     "rank by the largest mean attention to any named position.")
    n: int = Field(16, ge=1, le=1024, description="Number of prompts.")
    top: int = Field(12, ge=1, le=64, description="Heads listed in the result and drawn in the heatmap.")
    pattern_prompts: int = Field(3, ge=1, le=4, description="Prompts whose full attention patterns are drawn for "
                                 "the top 3 heads.")


class HeadAttention(BaseModel):
    head: str
    layer: int
    index: int = Field(description="the query head's index in its layer")
    attention: dict[str, Stat] = Field(description="per key position: mean attention weight from the query "
                                       "position over prompts, with its 95% bootstrap CI")
    score: MaybeFloat = Field(description="the ranking score: with prefer, mean attention(a) - attention(b); "
                              "else the largest mean attention to a named position")
    score_ci95: list[MaybeFloat]
    positive_share: MaybeFloat = Field(None, description="with prefer: share of prompts where attention(a) > "
                                       "attention(b)")
    unreachable: dict[str, float] = Field(default_factory=dict, description="positions this head cannot attend "
                                          "to on some prompts (after the query, or outside a sliding window): the "
                                          "share of prompts; their weight there is 0 by the mask")


class AttentionResult(RunResult):
    run_id: str
    task: str
    model: str
    n: int
    seed: int
    from_position: str
    to_positions: list[str]
    prefer: list[str] | None
    ranking: str = Field(description="how `top` is ordered")
    n_heads: int = Field(description="heads read")
    top: list[HeadAttention] = Field(description="the best-ranked heads, best first")


class AttentionOutput(HeavyOutput):
    result: AttentionResult | None = None


def _positions(args: AttentionInput, names: list[str], task: str) -> list[str]:
    """The key positions (`prefer` added when missing), each checked against the task's names."""
    if len(names) <= 1:  # END alone
        raise field_error("task", f"task {task!r} has no named positions, so there is nothing to attend to",
                          "define_task with `positions` (e.g. {'IO': {'variable': 'IO'}}) or pick a task that "
                          "names positions (get_task shows them)")
    default = [p for p in names if p not in (END, args.from_position)]
    wanted = list(dict.fromkeys([*(args.to_positions or default), *(args.prefer or [])]))
    if not wanted:
        raise field_error("to_positions", f"task {task!r} names no position besides from_position "
                          f"{args.from_position!r} and END", f"pass to_positions (e.g. ['END', "
                          f"'{args.from_position}']) or another from_position")
    for field, given in (("from_position", [args.from_position]), ("to_positions", wanted),
                         ("prefer", args.prefer or [])):
        if bad := [p for p in given if p not in names]:
            raise field_error(field, f"{bad[0]!r} is not a position of task {task!r}",
                              f"one of {', '.join(names)}")
    if args.prefer and args.prefer[0] == args.prefer[1]:
        raise field_error("prefer", "the two positions are the same", "two different positions, e.g. ['IO', 'S1']")
    return wanted


def _heads(args: AttentionInput, cfg, model_id: str) -> list[tuple[int, int]]:
    if args.heads is not None and args.layers is not None:
        raise field_error("heads", "give heads or layers, not both", "drop one of them")
    every = {Site("z", l, head=h).name: (l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)}
    if args.heads is not None:
        if bad := [h for h in args.heads if h not in every]:
            raise field_error("heads", f"{bad[0]!r} is not a head of {model_id} ({cfg.n_layers} layers of "
                              f"{cfg.n_heads} query heads)", f"names L<layer>H<head> from L0H0 to "
                              f"L{cfg.n_layers - 1}H{cfg.n_heads - 1}")
        return list(dict.fromkeys(every[h] for h in args.heads))
    if bad := [l for l in args.layers or [] if not 0 <= l < cfg.n_layers]:
        raise field_error("layers", f"{bad[0]} out of range", f"layers 0..{cfg.n_layers - 1}")
    layers = sorted(set(args.layers)) if args.layers is not None else range(cfg.n_layers)
    return [(l, h) for l in layers for h in range(cfg.n_heads)]


def _attention(run: ToolRun, args: AttentionInput) -> tuple[AttentionResult, dict]:
    spec = resolve_task(run.app, args.task)
    lm = run.load(args.model)
    cfg = lm.model.cfg
    heads = _heads(args, cfg, args.model)
    to = _positions(args, spec.position_names(), spec.name)
    validate_or_raise(spec, lm.tokenizer, args.model)
    ds = dataset(spec, lm.tokenizer, args.n, args.seed, None)
    examples, dropped = _resolved(ds, [args.from_position, *to])
    tokens = [e.tokens for e in examples]
    check_fits_model(tokens, spec.name, lm.model, args.model)
    seq = max(len(t) for t in tokens)
    refuse_oversized(Footprint(lambda n: attention_footprint(cfg, n, len(heads), seq), {"n": len(tokens)}),
                     f"reading the attention of {len(heads)} heads on prompts of up to {seq} tokens")
    with lm.use():
        try:
            rep = head_attention(lm.model, tokens, [e.positions[args.from_position] for e in examples],
                                 {p: [e.positions[p] for e in examples] for p in to}, heads,
                                 [Site("z", l, head=h).name for l, h in heads], args.from_position,
                                 tuple(args.prefer) if args.prefer else None, pattern_prompts=args.pattern_prompts,
                                 seed=args.seed, progress=run.span())
        except ValueError as e:  # the arguments are checked above; a method refusal still reads as one
            raise ToolError(f"task: {e}") from None
    run.progress(0.95, "plots and store")
    run.open(spec, args.model, lm, args.seed)
    top = [_head_row(rep, i) for i in rep.ranked(args.top)]
    _files(run, args, spec.name, rep, examples, lm.tokenizer)
    ranking = (f"mean attention({args.prefer[0]}) - attention({args.prefer[1]}) from {args.from_position}, "
               f"paired over prompts" if args.prefer else
               f"largest mean attention from {args.from_position} to any of {', '.join(to)}")
    result = AttentionResult(
        run_id=run.run_id, task=spec.name, model=args.model, n=len(examples), seed=args.seed,
        from_position=args.from_position, to_positions=to, prefer=args.prefer, ranking=ranking, n_heads=len(heads),
        top=top, summary=_summary(args, spec.name, top), warnings=_warnings(args, rep, top, dropped),
        files=run.files, cost=run.cost(rep.cost))
    return result, {"top_head": top[0].head, "top_score": top[0].score}


def _resolved(ds, used: list[str]) -> tuple[list, int]:
    """The examples on which every used position occurs, and how many were left out."""
    bad = {i for p in used for i in ds.unresolved.get(p, [])}
    kept = [e for i, e in enumerate(ds.examples) if i not in bad]
    if not kept:
        raise field_error("to_positions", f"positions {used} do not all occur in any prompt of the task",
                          "positions that every template contains (get_task)")
    return kept, len(bad)


def _head_row(rep: AttentionReport, i: int) -> HeadAttention:
    layer, head = rep.heads[i]
    n = rep.weights.shape[0]
    return HeadAttention(
        head=rep.names[i], layer=layer, index=head,
        attention={p: Stat(mean=round(float(rep.mean[i, j]), 4), ci95=[round(float(rep.lo[i, j]), 4),
                                                                       round(float(rep.hi[i, j]), 4)], n=n)
                   for j, p in enumerate(rep.positions)},
        score=round(float(rep.score[i]), 4), score_ci95=[round(float(rep.score_lo[i]), 4),
                                                         round(float(rep.score_hi[i]), 4)],
        positive_share=None if rep.positive_share is None else round(float(rep.positive_share[i]), 4),
        unreachable={p: round(float(rep.unreachable[i, j]), 4) for j, p in enumerate(rep.positions)
                     if rep.unreachable[i, j] > 0})


def _files(run: ToolRun, args: AttentionInput, task: str, rep: AttentionReport, examples, tok) -> None:
    rank = rep.ranked(args.top)
    run.write_json("attention.json", {
        "heads": rep.names, "positions": rep.positions, "from_position": rep.from_position, "prefer": rep.prefer,
        "mean": rep.mean.tolist(), "ci95_low": rep.lo.tolist(), "ci95_high": rep.hi.tolist(),
        "score": rep.score.tolist(), "order": [rep.names[i] for i in rep.order],
        "prompts": [e.prompt for e in examples]})
    run.write_tensors("attention.safetensors", {
        "weights": torch.as_tensor(rep.weights, dtype=torch.float32), "rows": rep.rows,
        "lengths": torch.tensor(rep.lengths), "mean": torch.as_tensor(rep.mean, dtype=torch.float32),
        "score": torch.as_tensor(rep.score, dtype=torch.float32)})
    run.publish("result.json")
    what = f"{task} on {args.model}, n={len(examples)}"
    run.save_figure("attention_heatmap.png", plots.heatmap(
        rep.mean[rank], row_labels=[rep.names[i] for i in rank], col_labels=rep.positions, center_zero=False,
        title=f"mean attention from {rep.from_position}, top {len(rank)} heads"
              f"{f' by {rep.prefer[0]} - {rep.prefer[1]}' if rep.prefer else ''}\n{what}",
        cbar_label="attention weight", xlabel="key position", ylabel="head"), main=True)
    shown = list(rep.patterns)
    run.save_figure("patterns.png", plots.attention_grid(
        [rep.patterns[h] for h in shown], [[tok.decode([t]) for t in examples[i].tokens] for i in rep.pattern_prompts],
        shown, title=f"attention patterns of the top heads\n{what}"))


def _summary(args: AttentionInput, task: str, top: list[HeadAttention]) -> str:
    t = top[0]
    weights = ", ".join(f"{p} {s.mean:.2f}" for p, s in t.attention.items())
    text = f"Top head {t.head}: attention from {args.from_position}: {weights}"
    if args.prefer:
        text += (f"; {args.prefer[0]} - {args.prefer[1]} = {t.score:+.2f} (95% CI {t.score_ci95[0]:+.2f}.."
                 f"{t.score_ci95[1]:+.2f}), > 0 on {100 * (t.positive_share or 0):.0f}% of prompts")
    names = [h.head for h in top[:5]]
    text += f". Next: attribute(task='{task}', model='{args.model}', level='heads', method='exact') tests whether " \
            f"{', '.join(names)} matter causally (attention shows where a head reads, not that its output is used)."
    return text


def _warnings(args: AttentionInput, rep: AttentionReport, top: list[HeadAttention], dropped: int) -> list[str]:
    out = ["attention weights are not causal: a head can attend to a position and write nothing that matters; "
           "confirm with attribute or locate(sites=['z'])"]
    if masked := sorted({p for h in top for p in h.unreachable}):
        out.append(f"some top heads cannot attend to {', '.join(masked)} from {args.from_position} on some prompts "
                   f"(the position comes later, or lies outside a sliding window): weight 0 there is the mask")
    if rep.weights.shape[0] < 8:
        out.append(f"only {rep.weights.shape[0]} prompts: the confidence intervals are wide")
    if dropped:
        out.append(f"{dropped} prompts left out: a requested position does not occur in them")
    if args.prefer and top[0].score is not None and top[0].score_ci95[0] is not None and top[0].score_ci95[0] <= 0:
        out.append(f"even the top head's preference for {args.prefer[0]} over {args.prefer[1]} has a CI that "
                   f"reaches 0: no head reliably prefers it")
    return out


def attention(app: AppContext, args: AttentionInput, progress: Progress | None = None) -> AttentionOutput:
    spec = resolve_task(app, args.task)  # fail fast on an unknown task or position, before a job exists
    _positions(args, spec.position_names(), spec.name)
    return run_heavy(app, TOOL, args, spec.name, args.model, f"attention {spec.name} on {args.model} (n={args.n})",
                     _attention, AttentionOutput, progress)


ATTENTION = ToolSpec(
    TOOL, fn=attention, input_model=AttentionInput, output_model=AttentionOutput, progress=True, description=(
        "Where do heads attend? For each head (heads=['L9H9', ...], or every head of `layers`, default all), the "
        "attention weight from a named position (from_position, default END = the last token) to each of the task's "
        "named positions, mean with 95% bootstrap CI over n prompts. prefer=['IO', 'S1'] ranks heads by the paired "
        "difference attention(IO) - attention(S1) with its CI and the share of prompts where it is > 0 (e.g. name "
        "movers); otherwise heads rank by their largest mean attention to a named position. Query heads are "
        "reported under grouped-query attention; sliding-window masks are respected and flagged. Attention is not "
        "causal: confirm with attribute or locate. Plots: heads x positions heatmap, full patterns of the top 3 "
        "heads on a few prompts. Runs as a job; identical requests return the stored run."))
