"""Tool scrub_hypothesis: causal scrubbing — how much behaviour survives resampling everything a hypothesis
says cannot matter?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field

from .. import lazy
from ..methods.core import Progress
from ..methods.scrubbing import Hypothesis, HypothesisError, everything_matters, nothing_matters
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .common import DEFAULT_MODEL, MaybeFloat, Seed, dataset, resolve_task, validate_or_raise
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
torch = lazy("torch")
plots = lazy("mcp_interp.artifacts.plots")
hypothesis_graph = lazy("mcp_interp.artifacts.graph_plot", "hypothesis_graph")
run_scrub = lazy("mcp_interp.methods.scrubbing", "scrub_hypothesis")

TOOL = "scrub_hypothesis"
ABLATION_LABEL = {"resample": "resampling (scrubbing)", "zero": "zero ablation", "mean": "mean ablation"}
HYPOTHESIS_DOC = (
    "The hypothesis to test: a correspondence between interpretation nodes (`interp`: values the task's causal "
    "model computes from the input, by task variable or restricted expression) and model nodes (`nodes`: embed / "
    "head / mlp / resid at task positions, each claiming to represent one interp node, with the `parents` — or, "
    "for heads, q/k/v `inputs` — whose outputs matter for it); `output.parents` are the nodes that matter "
    "directly. Everything not named is resampled from random inputs. Or the string 'everything' (every "
    "component matters: recovers 1 exactly) or 'nothing' (nothing matters: recovers ~0).")
FIX = ("Fix: correct that field of the hypothesis (get_task lists the task's variables and positions; load_model "
       "shows n_layers / n_heads); 'everything' and 'nothing' are the identity hypotheses.")


class ScrubInput(HeavyInput):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    task: str = Field(..., description="Task name (list_tasks / define_task).")
    hypothesis: Hypothesis | Literal["everything", "nothing"] = Field(..., description=HYPOTHESIS_DOC)
    n: int = Field(64, ge=4, le=1024, description="Number of dataset examples (each is the reference input once "
                   "per seed). Resampling draws agreeing inputs from these, so use enough for every value.")
    seed: Seed = Field(0, description="Dataset seed, 0..2**32-1.")
    seeds: int = Field(3, ge=1, le=16, description="Number of resampling seeds (0..seeds-1); results give mean, "
                       "std and per-seed values.")
    ablations: list[Literal["zero", "mean"]] = Field(
        ["zero", "mean"], description="Also score the same tree with the unimportant contributions zero- or "
        "mean-ablated instead of resampled (for contrast: those take the model off distribution).")
    contributions: bool = Field(True, description="Per model node: the score when its claim is dropped (the node "
                                "becomes unimportant) and when its interpretation is sharpened to the whole input.")


class Recovered(BaseModel):
    """A recovered fraction; null where undefined (the metric's gap between the model and the random
    baseline is 0, e.g. a counterfactual that does not change the answer)."""

    mean: MaybeFloat
    std: MaybeFloat = Field(description="sample std over resampling seeds (0 for one seed)")
    per_seed: list[MaybeFloat]


class AblationScores(BaseModel):
    loss_recovered: Recovered
    metric_recovered: Recovered


class NodeContribution(BaseModel):
    name: str
    label: str = Field(description="the component and positions, e.g. L0H0@END")
    interp: str
    drop_effect: MaybeFloat = Field(description="loss recovered lost when this node's claim is dropped (large = "
                                    "needed; null when loss recovered is undefined)")
    drop_effect_metric: MaybeFloat
    sharpen_effect: MaybeFloat = Field(None, description="loss recovered gained when the node's interpretation is "
                                         "sharpened to the whole input (large = its interpretation is too coarse); "
                                         "None when it already is 'input'")
    sharpen_effect_metric: MaybeFloat = None


class TreeSize(BaseModel):
    copies: int = Field(description="copies of the model's nodes the treeified hypothesis runs")
    rows_run: int = Field(description="forward rows the scrubbed runs took")
    layouts: int = Field(description="token layouts the examples fall into")


class InterpStat(BaseModel):
    classes: int = Field(description="values the interpretation takes on these examples")
    mean_agreeing_inputs: float = Field(description="inputs of its layout that agree with an input, on average (1: "
                                        "the claim through it cannot be tested)")


class ScrubHypothesisResult(RunResult):
    run_id: str
    task: str
    model: str
    hypothesis: str = Field(description="the hypothesis name")
    n: int
    seed: int
    seeds: list[int]
    metric: str
    loss_recovered: Recovered = Field(description="(L_random - L_scrubbed) / (L_random - L_model): 1 = the hypothesis "
                                      "explains all of the loss, 0 = no better than random inputs")
    metric_recovered: Recovered = Field(description="the same fraction for the task metric")
    loss_model: MaybeFloat
    loss_random: MaybeFloat
    metric_model: MaybeFloat
    metric_random: MaybeFloat
    ablations: dict[str, AblationScores] = Field(description="the same tree with unimportant inputs zero- / "
                                                 "mean-ablated instead of resampled")
    contributions: list[NodeContribution]
    tree: TreeSize = Field(description="treeified size: copies, rows run, token layouts")
    interp_stats: dict[str, InterpStat] = Field(description="per interpretation node: number of values and mean "
                                                "agreeing inputs")


class ScrubOutput(HeavyOutput):
    result: ScrubHypothesisResult | None = None


def _hypothesis_error(e: HypothesisError) -> ToolError:
    return ToolError(f"hypothesis.{e.field}: {e.message.rstrip('.')}. {FIX}")


def _recovered(seed_stats) -> Recovered:
    defined = bool(np.isfinite(seed_stats.mean))  # an undefined mean has no spread either
    return Recovered(mean=round(seed_stats.mean, 5), std=round(seed_stats.std, 5) if defined else None,
                     per_seed=[round(x, 5) for x in seed_stats.per_seed])


def _scrub(run: ToolRun, args: ScrubInput) -> tuple[ScrubHypothesisResult, dict]:
    spec = resolve_task(run.app, args.task)
    lm = run.load(args.model)
    validate_or_raise(spec, lm.tokenizer, args.model)
    ds = dataset(spec, lm.tokenizer, args.n, args.seed, None, model=lm.model, model_id=args.model)
    hyp = args.hypothesis
    if hyp == "everything":
        hyp = everything_matters(lm.model)
    elif hyp == "nothing":
        hyp = nothing_matters(lm.model)
    with lm.use():
        try:
            res = run_scrub(lm.model, ds, hyp, seeds=range(args.seeds), ablations=tuple(args.ablations),
                            contributions=args.contributions, progress=run.span(), should_cancel=run.should_cancel)
        except HypothesisError as e:
            raise _hypothesis_error(e) from None
        except ValueError as e:
            raise ToolError(f"model: {e}. Fix: scrub a model whose architecture is supported (list_models).") \
                from None
    run.progress(0.95, "plots and store")
    return _result(run, args, spec, lm, hyp, res)


def _f3(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _round5(x: float | None) -> float | None:
    """Rounded for the result; None stays None (MaybeFloat turns NaN into null)."""
    return None if x is None else round(x, 5)


def _result(run: ToolRun, args, spec, lm, hyp, res) -> tuple[ScrubHypothesisResult, dict]:
    run.open(spec, args.model, lm, args.seed)
    run.publish("result.json")
    run.write_json("hypothesis.json", hyp.model_dump(mode="json") if isinstance(hyp, Hypothesis) else dict(hyp))
    run.write_json("graph.json", res.graph)
    tensors = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in res.per_example.items()}
    for mode, sc in res.ablations.items():
        tensors[f"loss_{mode}"] = torch.as_tensor(sc.per_example_loss, dtype=torch.float32)
        tensors[f"metric_{mode}"] = torch.as_tensor(sc.per_example_metric, dtype=torch.float32)
    run.write_tensors("per_example.safetensors", tensors)
    _plots(run, args, spec, res)
    ablations = {m: AblationScores(loss_recovered=_recovered(s.recovered),
                                   metric_recovered=_recovered(s.recovered_metric))
                 for m, s in res.ablations.items()}
    contribs = [NodeContribution(
        name=c.name, label=c.label, interp=c.interp, drop_effect=_round5(c.drop_effect),
        drop_effect_metric=_round5(c.drop_effect_metric),
        sharpen_effect=_round5(c.sharpen_effect), sharpen_effect_metric=_round5(c.sharpen_effect_metric))
        for c in res.contributions]
    lr, mr = _recovered(res.scrubbed.recovered), _recovered(res.scrubbed.recovered_metric)
    warnings = list(res.warnings)
    if res.loss_random - res.loss_model < 0.1:
        warnings.append(f"random inputs barely raise the loss ({res.loss_model:.3f} -> {res.loss_random:.3f}): "
                        f"the recovered fractions are noisy; check run_baseline")
    if mr.mean is None:
        warnings.append(f"{res.metric_name} recovered is undefined (null): the model's and the random inputs' mean "
                        f"{res.metric_name} are equal ({res.metric_model:.3f}), e.g. because the answer and the "
                        f"task's first counterfactual answer coincide; read loss recovered")
    summary = (f"hypothesis {res.hypothesis!r}: loss recovered {_f3(lr.mean)} ± {_f3(lr.std)}, "
               f"{res.metric_name} recovered {_f3(mr.mean)} ± {_f3(mr.std)} over {len(res.seeds)} seed(s)")
    if ablations:
        summary += "; " + ", ".join(f"{m} ablation {_f3(a.loss_recovered.mean)}" for m, a in ablations.items())
    if defined := [c for c in contribs if c.drop_effect is not None]:
        top = max(defined, key=lambda c: c.drop_effect)
        summary += f"; most needed claim: {top.name} (drop effect {top.drop_effect:+.3f})"
    if lr.mean is not None and lr.mean >= 0.8:
        summary += (". Next: the hypothesis explains most of the loss; make it sparser (drop the claims with the "
                    "smallest drop_effect) and scrub again to find what it cannot lose")
    else:
        summary += (". Next: the hypothesis misses part of the mechanism; add the components locate or attribute "
                    "rank highest, or sharpen claims with a large sharpen_effect, and scrub again")
    result = ScrubHypothesisResult(
        run_id=run.run_id, task=spec.name, model=args.model, hypothesis=res.hypothesis, n=res.n, seed=args.seed,
        seeds=res.seeds, metric=res.metric_name, loss_recovered=lr, metric_recovered=mr,
        loss_model=round(res.loss_model, 5), loss_random=round(res.loss_random, 5),
        metric_model=round(res.metric_model, 5), metric_random=round(res.metric_random, 5),
        ablations=ablations, contributions=contribs, tree=res.tree, interp_stats=res.interp_stats,
        summary=summary, warnings=warnings, files=run.files,
        cost={"scrub_seconds": round(res.seconds, 3), "total_seconds": run.seconds(),
              **{k: v for k, v in res.tree.items() if k == "rows_run"}})
    return result, {"loss_recovered": lr.mean, "metric_recovered": mr.mean, "hypothesis": res.hypothesis}


def _plots(run: ToolRun, args, spec, res) -> None:
    what = f"{spec.name} on {args.model}, n={res.n}, {len(res.seeds)} seed(s)"
    run.save_figure("hypothesis_graph.png", hypothesis_graph(
        res.graph, title=f"hypothesis {res.hypothesis!r}: loss recovered {res.scrubbed.recovered.mean:.2f}\n{what}"))
    scores = {"resample": res.scrubbed, **res.ablations}
    means = np.array([s.recovered.mean for s in scores.values()])
    stds = np.array([s.recovered.std for s in scores.values()])
    run.save_figure("recovered_bar.png", plots.bar_with_ci(
        [ABLATION_LABEL[m] for m in scores], means, means - stds, means + stds,
        title=f"loss recovered (± std over seeds)\n{what}", ylabel="fraction of loss recovered"), main=True)


def scrub_hypothesis(app: AppContext, args: ScrubInput, progress: Progress | None = None) -> ScrubOutput:
    spec = resolve_task(app, args.task)
    name = args.hypothesis if isinstance(args.hypothesis, str) else args.hypothesis.name
    return run_heavy(app, TOOL, args, spec.name, args.model,
                     f"scrub_hypothesis {name!r} on {spec.name} / {args.model} (n={args.n}, {args.seeds} seeds)",
                     _scrub, ScrubOutput, progress)


SCRUB_HYPOTHESIS = ToolSpec(
    TOOL, fn=scrub_hypothesis, input_model=ScrubInput, output_model=ScrubOutput, progress=True, description=(
        "Test a circuit hypothesis by causal scrubbing (Chan et al. 2022): every activation the hypothesis says "
        "cannot matter is resampled from other inputs (those that agree on what it says matters), and the score is "
        "the fraction of the loss recovered, (L_random - L_scrubbed) / (L_random - L_model), with the same for the "
        "task metric, over `seeds` resampling seeds. Hypothesis JSON: `interp` = named values of the task's causal "
        "model (a variable or restricted expression); `nodes` = model nodes {name, kind: embed|head|mlp|resid, "
        "layer, head, position (task position name, token index, list, or 'all'), interp (what it represents; "
        "default 'input'), parents (nodes whose outputs matter for it; omitted = leaf) or, for heads, inputs "
        "{q,k,v}}; `output.parents` = nodes that matter directly. Example: {\"interp\": [{\"name\": \"x\", "
        "\"value\": \"x\"}], \"nodes\": [{\"name\": \"mover\", \"kind\": \"head\", \"layer\": 0, \"head\": 0, "
        "\"position\": \"END\", \"interp\": \"x\", \"parents\": [\"emb\"]}, {\"name\": \"emb\", \"kind\": "
        "\"embed\", \"position\": \"X\", \"interp\": \"x\"}], \"output\": {\"parents\": [\"mover\"]}}. Or "
        "'everything' / 'nothing' (the identities: 1 and ~0). Resampled inputs share the reference input's token "
        "layout (same length, named positions at the same indices), so a position means the same slot in both; "
        "varied layouts are scrubbed within each layout group. Also reports zero- and mean-ablation of the same "
        "unimportant inputs (off-distribution, for contrast) and per node the cost of dropping its claim or "
        "sharpening its interpretation. Stores hypothesis.json, per-example losses (safetensors), the hypothesis "
        "graph coloured by contribution and a recovered-fraction bar chart (PNG resources). Runs as a job; "
        "identical requests return the stored run."))
