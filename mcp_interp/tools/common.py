"""Shared orchestration helpers: resolve a task and a model, build a dataset, map errors to ToolError."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from .. import lazy
from ..methods.core.footprint import Footprint, cached_runs_footprint
from ..models import ModelLoadError
from ..tasks.causal import TaskSpecError
from ..tasks.dataset import TaskDataset, build_dataset
from ..tasks.spec import TaskSpec
from ..tasks.validation import check_with_tokenizer
from .budget import refuse_oversized
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on first use, not when the server starts
torch = lazy("torch")
LogitDiffMetric, ProbDiffMetric, ProbMetric = lazy("mcp_interp.methods.core", "LogitDiffMetric", "ProbDiffMetric",
                                                   "ProbMetric")

DEFAULT_MODEL = "smollm2-135m"
# Every seed input: numpy and torch generators take 0..2**32-1; anything else is refused by name.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="Random seed, 0..4294967295.")]


def finite_or_none(x: float | None) -> float | None:
    """JSON has no NaN or infinity: an undefined number is null (and the result's warnings say why)."""
    return None if x is None or not math.isfinite(x) else float(x)


# A float field that stores NaN / infinity as null (the schema says "number or null").
MaybeFloat = Annotated[float | None, AfterValidator(finite_or_none)]


class SaeQuality(BaseModel):
    """The SAE on held-out rows (null where undefined, e.g. a diverged SAE); the CE / KL fields only with
    splicing, the `*_with_outliers` ones only when held-out outliers were left out."""
    explained_variance: MaybeFloat
    mse: MaybeFloat
    l0: MaybeFloat
    dead: int
    dense: int
    dense_threshold: float
    n_rows: int
    d_sae: int
    explained_variance_with_outliers: MaybeFloat = None
    mse_with_outliers: MaybeFloat = None
    ce_clean: MaybeFloat = None
    ce_spliced: MaybeFloat = None
    ce_zero_ablation: MaybeFloat = None
    kl_spliced: MaybeFloat = None
    kl_zero_ablation: MaybeFloat = None
    fraction_loss_recovered: MaybeFloat = None
    n_tokens: int | None = None
    n_passed_through: int | None = None


class Stat(BaseModel):
    """A mean over examples with its 95% bootstrap confidence interval; null where undefined (e.g. a ratio whose
    denominator is 0)."""

    mean: MaybeFloat = Field(description="null when undefined")
    ci95: list[MaybeFloat] = Field(description="[low, high] percentile bootstrap interval of the mean (null "
                                   "where undefined)")
    n: int


class ExamplePair(BaseModel):
    prompt: str
    answer: str
    counterfactual_prompt: str
    counterfactual_answer: str
    positions: dict[str, int] | None = None
    tokens: list[str] | None = None


def resolve_task(app: AppContext, name: str) -> TaskSpec:
    spec = app.tasks.get(name)
    if spec is None:
        raise ToolError(f"task: unknown task {name!r}. Known tasks: {', '.join(app.tasks.names())}. "
                        f"Fix: pick one of these or create it with define_task.")
    return spec


def resolve_model(app: AppContext, model_id: str, progress=None):
    """The loaded model (downloading a hub model first, its bytes reported through `progress`)."""
    try:
        return app.pool.get(model_id, progress=progress) if progress is not None else app.pool.get(model_id)
    except ModelLoadError as e:
        raise ToolError(f"model: {e}") from None


def resolve_tokenizer(app: AppContext, model_id: str):
    """The model's tokenizer, without loading weights when the pool can avoid it."""
    try:
        return app.pool.get_tokenizer(model_id)
    except ModelLoadError as e:
        raise ToolError(f"model: {e}") from None


def validate_or_raise(spec: TaskSpec, tokenizer, model_id: str, n: int | None = None, seed: int = 0):
    report = check_with_tokenizer(spec, tokenizer, n=n or min(spec.default_n, 32), seed=seed)
    if not report.ok:
        raise ToolError(f"task {spec.name!r} is not valid for {model_id}'s tokenizer. " + report.summary())
    return report


def dataset(spec: TaskSpec, tokenizer, n: int, seed: int, counterfactual: str | None,
            up_to: bool = False, answer_changes: bool = False, model=None, model_id: str = "") -> TaskDataset:
    """The task's dataset, errors named by field; with `model`, refused unless its prompts fit that model."""
    try:
        ds = build_dataset(spec, tokenizer, n, seed, counterfactual, up_to=up_to, answer_changes=answer_changes)
    except TaskSpecError as e:
        field = ("counterfactual" if e.field == "counterfactual"
                 else ("n" if e.field == "variables" else f"task.{e.field}"))
        raise ToolError(f"{field}: {e.message}") from None
    if model is not None:
        tokens = [t for e in ds.examples for t in (e.tokens, e.cf_tokens)]
        check_fits_model(tokens, spec.name, model, model_id)
        seq = max((len(t) for t in tokens), default=1)
        refuse_oversized(Footprint(lambda n: cached_runs_footprint(model.cfg, n, seq), {"n": len(ds)}),
                         f"caching every layer's activations on prompt pairs of up to {seq} tokens")
    return ds


def check_fits_model(token_lists, task: str, model, model_id: str) -> None:
    """ToolError unless every prompt fits the model: no longer than its context and every id in its vocabulary (a
    task built for another model — a toy's task on another toy — otherwise fails deep inside a forward)."""
    cfg = model.cfg
    longest = max((len(t) for t in token_lists), default=0)
    if longest > cfg.n_ctx:
        raise ToolError(f"task: prompts of {task!r} have up to {longest} tokens; {model_id or 'this model'} takes at "
                        f"most {cfg.n_ctx} (its context). Fix: a task made for this model (list_tasks), or shorter "
                        f"templates.")
    top = max((max(t) for t in token_lists if len(t)), default=-1)
    if top >= cfg.d_vocab:
        raise ToolError(f"task: prompts of {task!r} use token id {top}; {model_id or 'this model'} has "
                        f"{cfg.d_vocab} tokens. Fix: a task made for this model (list_tasks).")


def example_pairs(ds: TaskDataset, k: int, tokenizer: Any | None = None) -> list[ExamplePair]:
    out = []
    for e in ds.examples[:k]:
        toks = [tokenizer.decode([t]) for t in e.tokens] if tokenizer is not None else None
        out.append(ExamplePair(prompt=e.prompt, answer=e.answer, counterfactual_prompt=e.cf_prompt,
                               counterfactual_answer=e.cf_answer, positions=e.positions, tokens=toks))
    return out


def counterfactual_name(spec: TaskSpec, variable: str | None, counterfactual: str | None) -> str | None:
    """The generator to use: `counterfactual`, or the one that resamples exactly `variable`."""
    if variable is None:
        return counterfactual
    if counterfactual is not None:
        raise ToolError("variable: give either `variable` or `counterfactual`, not both.")
    for cf in spec.counterfactuals:
        if cf.kind == "resample" and cf.variables == [variable]:
            return cf.name
    raise ToolError(f"variable: task {spec.name!r} has no generator that resamples exactly {variable!r}. "
                    f"Generators: {[(c.name, c.kind, c.variables) for c in spec.counterfactuals]}. Fix: pass one as "
                    f"`counterfactual`, or define_task with a resample generator for {variable!r}.")


def check_pairs(ds: TaskDataset, metric: str) -> None:
    """Clean and counterfactual prompts must align token by token, and a logit difference needs a gap."""
    bad = [i for i, e in enumerate(ds.examples) if len(e.tokens) != len(e.cf_tokens)]
    if bad:
        ex = "; ".join(f"{ds.examples[i].prompt!r} vs {ds.examples[i].cf_prompt!r}" for i in bad[:2])
        raise ToolError(f"counterfactual: {len(bad)} of {len(ds)} pairs differ in token length, so positions cannot be "
                        f"aligned (e.g. {ex}). Fix: pick a generator that keeps the length, or values of equal length.")
    if metric == "logit_diff":
        same = [i for i, e in enumerate(ds.examples) if e.answer_id == e.cf_answer_id]
        if same:
            raise ToolError(f"counterfactual: {ds.counterfactual!r} "
                            f"leaves the answer unchanged in {len(same)} pairs, so "
                            f"the logit difference has no gap to restore. Fix: a generator that changes the answer.")


def task_metric(name: str, ds: TaskDataset):
    """The per-example metric object for logit_diff, prob or prob_diff (each example's own correct and wrong sets,
    on its clean and its counterfactual prompt alike, as run_baseline reads them)."""
    if name == "prob_diff":
        return ProbDiffMetric.from_sets([e.good_ids for e in ds.examples], [e.bad_ids for e in ds.examples])
    answer = torch.tensor([e.answer_id for e in ds.examples])
    if name == "prob":
        return ProbMetric(answer)
    return LogitDiffMetric(answer, torch.tensor([e.cf_answer_id for e in ds.examples]))


CONTINUOUS_METRICS = ("logit_diff", "prob", "prob_diff")


def per_token_metric(spec: TaskSpec, metric: str | None, tool: str) -> str:
    """The metric a patching-style tool uses: the requested one or the task's, which must be read from the final
    position's logits (logit_diff, prob, or prob_diff on a task with an answer set; not accuracy). A task scored by
    accuracy gets its continuous counterpart when none is requested (`metric_note` says so)."""
    name = metric or spec.metric
    if metric is None and name not in CONTINUOUS_METRICS:
        name = "prob_diff" if spec.answer_set is not None else "logit_diff"
    if name == "prob_diff" and spec.answer_set is None:
        raise ToolError(f"metric: prob_diff needs the task's answer_set; task {spec.name!r} has none. Fix: pass "
                        f"metric='logit_diff' or 'prob'.")
    if name not in ("logit_diff", "prob", "prob_diff"):
        raise ToolError(f"metric: {tool} needs a continuous metric of the final logits (logit_diff, prob or "
                        f"prob_diff); task {spec.name!r} uses {name!r}. Fix: pass metric='logit_diff' or 'prob'.")
    return name


def metric_note(spec: TaskSpec, metric: str | None, used: str) -> list[str]:
    """The warning for a task metric replaced by `per_token_metric` (empty when none was)."""
    if metric is None and spec.metric not in CONTINUOUS_METRICS:
        return [f"task {spec.name!r} is scored by {spec.metric}, which is not a continuous function of the logits; "
                f"effects are measured with {used} (pass metric= to choose another)"]
    return []


def pair_dataset(spec: TaskSpec, lm, model_id: str, n: int, seed: int, variable: str | None,
                 counterfactual: str | None, metric_name: str):
    """Validated clean/counterfactual pairs for patching: (dataset, metric, clean tokens, counterfactual tokens)."""
    validate_or_raise(spec, lm.tokenizer, model_id)
    # a logit difference needs pairs with two answers: keep only those (no effect where every pair has two)
    ds = dataset(spec, lm.tokenizer, n, seed, counterfactual_name(spec, variable, counterfactual),
                 answer_changes=metric_name == "logit_diff", model=lm.model, model_id=model_id)
    check_pairs(ds, metric_name)
    clean = [torch.tensor(e.tokens) for e in ds.examples]
    corrupt = [torch.tensor(e.cf_tokens) for e in ds.examples]
    return ds, task_metric(metric_name, ds), clean, corrupt


def parse_layers(value: int | list[int] | str, n_layers: int, field: str) -> list[int]:
    """Layers from an int, a list of ints, or a range 'a:b' / 'a:b:step' (b excluded), each in 0..n_layers-1 (at
    most 64); ToolError naming `field` otherwise."""
    if isinstance(value, int):
        out = [value]
    elif isinstance(value, list):
        out = list(value)
    else:
        m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*(?::\s*(\d+)\s*)?", value)
        if not m:
            raise ToolError(f"{field}: {value!r} is not a layer range; write 'a:b' or 'a:b:step' (b excluded).")
        a, b, step = int(m[1]), int(m[2]), int(m[3] or 1)
        if step == 0:
            raise ToolError(f"{field}: {value!r} has step 0; write 'a:b' or 'a:b:step' with step >= 1.")
        if not (a < n_layers and b <= n_layers):  # bounds before building anything: '0:30000000' stays a range
            raise ToolError(f"{field}: {value!r} reaches past this model's layers 0..{n_layers - 1}; write e.g. "
                            f"'0:{n_layers}'.")
        out = list(range(a, b, step))
        if not out:
            raise ToolError(f"{field}: {value!r} is an empty range (the end is excluded and must be above the start); "
                            f"write e.g. '{a}:{min(a + 1, n_layers)}'.")
    if len(out) > 64:
        raise ToolError(f"{field}: {len(out)} layers; at most 64 (use a step).")
    bad = [x for x in out if not 0 <= x < n_layers]
    if not out or bad:
        shown = bad[:8] + (["..."] if len(bad) > 8 else []) if bad else out
        raise ToolError(f"{field}: layers {shown} are not in 0..{n_layers - 1}.")
    return out
