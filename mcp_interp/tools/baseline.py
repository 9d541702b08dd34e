"""Tool run_baseline: does the model solve the task, and do the counterfactuals do what they claim?"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from .. import lazy
from ..methods.core import Progress, ci_dict
from .base import HeavyInput, HeavyOutput, ToolRun, ToolSpec, run_heavy
from .common import DEFAULT_MODEL, Seed, Stat, dataset, resolve_task, validate_or_raise

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
torch = lazy("torch")
plots = lazy("mcp_interp.artifacts.plots")
counterfactual_check, compute_baseline = lazy("mcp_interp.methods.baseline", "counterfactual_check", "run_baseline")

TOOL = "run_baseline"
SOLVES_AT = 0.8  # primary accuracy needed to call the task solved


class RunBaselineInput(HeavyInput):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    task: str = Field(..., description="Task name (list_tasks / define_task).")
    counterfactual: str | None = Field(None, description="Generator for the clean/counterfactual pairs (default: the "
                                       "task's first).")
    n: int = Field(32, ge=2, le=2048, description="Number of examples.")
    seed: Seed = Field(0, description="Seed for sampling examples (and bootstrap), 0..2**32-1.")


class CounterfactualCheck(BaseModel):
    generator: str
    label_changes: float = Field(description="Share of examples whose causal-model label the generator changes.")
    model_follows: Stat = Field(description="Share where the model's prediction on the counterfactual "
                                            "equals its label.")


class BaselineResult(BaseModel):
    summary: str = Field("", description="The verdict and what to do next.")
    run_id: str
    task: str
    model: str
    counterfactual: str
    n: int
    seed: int
    solves: bool
    verdict: str
    metric: str = Field(description="The task's metric.")
    primary_accuracy: Stat = Field(description="pairwise accuracy (answer beats counterfactual answer) for logit_diff "
                                   "tasks; top-1 accuracy for prob/accuracy; "
                                   "top candidate in the correct set for prob_diff.")
    metrics: dict[str, Stat] = Field(description="Every per-example column, mean with 95% bootstrap CI. logit_diff is "
                                     "logit(answer) - logit(counterfactual answer) at the last token; "
                                     "cf_logit_diff the same "
                                     "on the counterfactual prompt.")
    counterfactual_checks: list[CounterfactualCheck]
    files: dict[str, str] = Field(description="Artifact URIs (read them as MCP resources).")
    seconds: float
    cached: bool = False


class RunBaselineOutput(HeavyOutput):
    result: BaselineResult | None = None


ACCURACY_NAMES = {"pairwise_accuracy": "pairwise accuracy (the answer's logit beats the counterfactual answer's)",
                  "accuracy": "top-1 accuracy (the answer is the model's most likely next token)"}


def _verdict(metric: str, acc: dict, metrics: dict, key: str = "accuracy") -> tuple[bool, str]:
    """(solves, verdict) from the primary accuracy `acc` (summary[key]); the verdict names which accuracy it is
    and, for pairwise accuracy, quotes top-1 accuracy beside it."""
    a = acc["mean"]
    diff = metrics.get("logit_diff") or metrics.get("prob_diff")
    diff_ok = diff is None or diff["ci95"][0] > 0
    solves = a >= SOLVES_AT and diff_ok
    what = (ACCURACY_NAMES.get(key, "accuracy") if metric != "prob_diff"
            else "accuracy (top candidate in the correct set)")
    tail = ""
    if key == "pairwise_accuracy" and "accuracy" in metrics:
        tail += f"; top-1 accuracy {metrics['accuracy']['mean']:.2f}"
    if diff is not None:
        name = "logit difference" if "logit_diff" in metrics else "probability difference"
        tail += f", mean {name} {diff['mean']:.2f} (95% CI {diff['ci95'][0]:.2f}..{diff['ci95'][1]:.2f})"
    if solves:
        return True, f"the model solves this task: {what} {a:.2f}{tail}. Interventions on it are meaningful."
    if a >= 0.6 and diff_ok:
        return False, (f"the model only partly solves this task: {what} {a:.2f}{tail}. Effects will be noisy; "
                       f"consider restricting to examples it gets right or a larger model.")
    return False, (f"the model does not solve this task: {what} {a:.2f}{tail} — interventions on it would mean "
                   f"nothing. Check the prompt format, the answer's leading space, or use another model.")


def _run_baseline(run: ToolRun, args: RunBaselineInput) -> tuple[BaselineResult, dict]:
    spec = resolve_task(run.app, args.task)
    lm = run.load(args.model, at=0.02)
    validate_or_raise(spec, lm.tokenizer, args.model)
    ds = dataset(spec, lm.tokenizer, args.n, args.seed, args.counterfactual, model=lm.model, model_id=args.model)
    with lm.use():
        table = compute_baseline(lm.model, ds, progress=run.span(0.05, 0.65))
        checks = []
        for i, gen in enumerate(spec.counterfactuals):
            run.check_cancelled()
            run.progress(0.65 + 0.3 * i / len(spec.counterfactuals), f"checking counterfactual {gen.name}")
            g = dataset(spec, lm.tokenizer, args.n, args.seed, gen.name)
            cols = counterfactual_check(lm.model, g)
            checks.append(CounterfactualCheck(generator=gen.name, label_changes=float(cols["label_changes"].mean()),
                                              model_follows=Stat(**ci_dict(cols["follows"], seed=args.seed))))
    summary = table.summary(seed=args.seed)
    primary_key = {"logit_diff": "pairwise_accuracy", "prob_diff": "accuracy"}.get(spec.metric, "accuracy")
    solves, verdict = _verdict(spec.metric, summary[primary_key], summary, primary_key)
    run.open(spec, args.model, lm, args.seed)
    run.publish("result.json", "manifest.json")
    rows = []
    tok = lm.tokenizer
    for i, e in enumerate(ds.examples):
        row = {"prompt": e.prompt, "answer": e.answer, "counterfactual_prompt": e.cf_prompt,
               "counterfactual_answer": e.cf_answer,
               "prediction": tok.decode([int(table.columns["pred"][i])]),
               "counterfactual_prediction": tok.decode([int(table.columns["cf_pred"][i])])}
        row.update({k: float(v[i]) for k, v in table.columns.items() if k not in ("pred", "cf_pred")})
        rows.append(row)
    run.write_json("examples.json", rows)
    run.write_tensors("columns.safetensors", {k: torch.as_tensor(np.asarray(v, dtype=np.float32))
                                              for k, v in table.columns.items()})
    diff_key = "logit_diff" if "logit_diff" in table.columns else "prob_diff"
    run.save_figure("metric_hist.png", plots.histogram(
        {"clean": table.columns[diff_key], "counterfactual": table.columns[f"cf_{diff_key}"]},
        title=f"{spec.name} on {args.model}: {diff_key} per example (n={len(ds)})", xlabel=diff_key.replace("_", " ")),
        main=True)
    follow = (f" Next: locate(task='{spec.name}', model='{args.model}') to find where the answer is computed."
              if solves else " Next: before any intervention, fix the task (get_task shows its prompts and "
              "answers) or pick a model that solves it (list_models).")
    result = BaselineResult(
        summary=verdict + follow, run_id=run.run_id, task=spec.name, model=args.model,
        counterfactual=ds.counterfactual, n=len(ds),
        seed=args.seed, solves=solves, verdict=verdict, metric=spec.metric,
        primary_accuracy=Stat(**summary[primary_key]), metrics={k: Stat(**v) for k, v in summary.items()},
        counterfactual_checks=checks, files=run.files, seconds=run.seconds())
    return result, {"solves": solves, primary_key: summary[primary_key]["mean"],
                    **({diff_key: summary[diff_key]["mean"]} if diff_key in summary else {})}


def run_baseline(app: AppContext, args: RunBaselineInput, progress: Progress | None = None) -> RunBaselineOutput:
    spec = resolve_task(app, args.task)  # fail fast on an unknown task, before a job exists
    return run_heavy(app, TOOL, args, spec.name, args.model, f"baseline {spec.name} on {args.model} (n={args.n})",
                     _run_baseline, RunBaselineOutput, progress)


RUN_BASELINE = ToolSpec(
    TOOL, fn=run_baseline, input_model=RunBaselineInput, output_model=RunBaselineOutput, progress=True,
    description=(
        "Does the model solve the task? Accuracy, logit difference (answer vs counterfactual answer) and answer "
        "probability on n examples with 95% bootstrap CIs, the same on counterfactual prompts, and per "
        "counterfactual generator how often the label changes and the model follows it. Returns a verdict: do not "
        "run interventions on a task the model does not solve. Runs as a job (see wait_seconds / get_job); stores "
        "examples.json and a histogram plot."))
