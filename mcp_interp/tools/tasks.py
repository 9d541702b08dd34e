"""Tools define_task, list_tasks, get_task: causal tasks, validated against a tokenizer before any weights load."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from ..runtime.task_registry import task_hash
from ..tasks.causal import CausalModel
from ..tasks.spec import TaskSpec
from ..tasks.validation import check_with_tokenizer
from .base import ToolSpec
from .common import DEFAULT_MODEL, ExamplePair, Seed, dataset, example_pairs, resolve_task, resolve_tokenizer
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext


class DefineTaskInput(TaskSpec):
    """A task spec (all TaskSpec fields) plus how to validate and store it."""

    validate_with_model: str = Field(DEFAULT_MODEL, description="Model whose tokenizer the spec is checked against.")
    overwrite: bool = Field(False, description="Replace an existing user-defined task of the same name (built-in "
                            "tasks are never replaced: choose a new name).")


class GeneratorStats(BaseModel):
    n: int
    lengths: list[int] = Field(description="token lengths of the clean prompts")
    length_mismatched_pairs: int = Field(description="pairs whose counterfactual has another token length")
    answer_changes: float = Field(description="share of pairs whose counterfactual changes the answer")


class DefineTaskOutput(BaseModel):
    name: str
    task_hash: str
    validated_with: str
    counterfactuals: dict[str, GeneratorStats] = Field(description="Per generator: n, token lengths, share of "
                                                        "changed answers.")
    warnings: list[str]
    examples: list[ExamplePair]


def define_task(app: AppContext, args: DefineTaskInput) -> DefineTaskOutput:
    spec = TaskSpec.model_validate(args.model_dump(exclude={"validate_with_model", "overwrite"}))
    if app.tasks.is_builtin(spec.name):
        raise ToolError(f"name: {spec.name!r} is a built-in task and cannot be replaced "
                        "(not even with overwrite=true). "
                        f"Fix: choose another name, e.g. '{spec.name}-custom'; get_task('{spec.name}') gives its spec "
                        f"to start from.")
    if app.tasks.get(spec.name) is not None and not args.overwrite:
        kind = "a built-in task" if app.tasks.is_builtin(spec.name) else "an existing task"
        raise ToolError(f"name: {spec.name!r} is {kind}. Fix: choose another name or pass overwrite=true.")
    tok = resolve_tokenizer(app, args.validate_with_model)
    report = check_with_tokenizer(spec, tok, n=min(spec.default_n, 32))
    if not report.ok:
        raise ToolError(f"task {spec.name!r} is not valid for {args.validate_with_model}'s tokenizer. "
                        + report.summary() + _tokenizer_hint(report, args.validate_with_model))
    app.tasks.put(spec)
    ds = dataset(spec, tok, min(spec.default_n, 32), 0, None)
    return DefineTaskOutput(name=spec.name, task_hash=task_hash(spec), validated_with=args.validate_with_model,
                            counterfactuals=report.stats, warnings=[str(w) for w in report.warnings],
                            examples=example_pairs(ds, 3, tok))


def _tokenizer_hint(report, model_id: str) -> str:
    """When an error depends on the tokenizer (encoding, single-token answers, position offsets): say which
    tokenizer checked it and how to check against the model the task is meant for."""
    tokenish = [p for p in report.errors if p.field in ("templates", "answer", "answer_set.candidates")
                or p.field.startswith("positions.") or "tokenizer" in p.message]
    if not tokenish:
        return ""
    return (f" Token-level checks use the tokenizer of validate_with_model ({model_id!r}, the default when it is not "
            f"given). Fix: if the task is meant for another model, pass validate_with_model='<that model id>' "
            f"(list_models), e.g. a toy/... model for character-level tasks.")


DEFINE_TASK = ToolSpec(
    "define_task", fn=define_task, input_model=DefineTaskInput, output_model=DefineTaskOutput, description=(
        "Define a causal task: input variables (values or range), mechanisms (restricted expressions "
        "like \"IO if order == 'ABB' else S\" or lookup tables), constraints, prompt templates with "
        "{variable} slots, the answer template (mind the leading space), counterfactual generators "
        "(resample | resample_all | swap | assign), named positions (by variable slot or literal text; "
        "END is implicit) and the metric (logit_diff | prob | accuracy | prob_diff with answer_set). "
        "Validated against validate_with_model's tokenizer: single-token answers, resolvable positions, "
        "generators that change the answer when they claim to, enough distinct examples. Errors name "
        "the field and the examples. get_task('ioi') shows a complete example spec."))


class TaskSummary(BaseModel):
    name: str
    builtin: bool
    description: str
    variables: list[str]
    counterfactuals: list[str]
    positions: list[str]
    metric: str


class ListTasksOutput(BaseModel):
    tasks: list[TaskSummary]


def _summary(app: AppContext, spec: TaskSpec) -> TaskSummary:
    return TaskSummary(name=spec.name, builtin=app.tasks.is_builtin(spec.name), description=spec.description,
                       variables=[*spec.variables, *spec.mechanisms],
                       counterfactuals=[c.name for c in spec.counterfactuals],
                       positions=spec.position_names(), metric=spec.metric)


def list_tasks(app: AppContext) -> ListTasksOutput:
    return ListTasksOutput(tasks=[_summary(app, resolve_task(app, n)) for n in app.tasks.names()])


LIST_TASKS = ToolSpec(
    "list_tasks", fn=list_tasks, input_model=None, output_model=ListTasksOutput, read_only=True,
    description="List built-in and defined tasks with their variables, counterfactual generators, named positions "
    "and metric.")


class GetTaskInput(BaseModel):
    task: str = Field(..., description="Task name (list_tasks shows them).")
    model: str | None = Field(None, description="Tokenize examples with this model's tokenizer "
                                                "(shows tokens and positions).")
    counterfactual: str | None = Field(None, description="Which generator's pairs to show (default: the first).")
    n_examples: int = Field(3, ge=1, le=20)
    seed: Seed = 0


class GetTaskOutput(BaseModel):
    summary: TaskSummary
    task_hash: str
    spec: TaskSpec
    examples: list[ExamplePair]


def get_task(app: AppContext, args: GetTaskInput) -> GetTaskOutput:
    spec = resolve_task(app, args.task)
    examples: list[ExamplePair] = []
    if args.model is not None:
        tok = resolve_tokenizer(app, args.model)
        examples = example_pairs(dataset(spec, tok, args.n_examples, args.seed, args.counterfactual),
                                 args.n_examples, tok)
    else:
        cm, rng = CausalModel(spec), random.Random(args.seed)
        try:
            cf = spec.counterfactual(args.counterfactual)
        except KeyError:
            raise ToolError(f"counterfactual: unknown {args.counterfactual!r}; this task has "
                            f"{[c.name for c in spec.counterfactuals]}") from None
        for _ in range(args.n_examples):
            base = cm.sample(rng)
            other = cm.counterfactual(base, cf, rng) or base
            examples.append(ExamplePair(prompt=cm.render(base).text, answer=cm.answer(base),
                                        counterfactual_prompt=cm.render(other).text,
                                        counterfactual_answer=cm.answer(other)))
    return GetTaskOutput(summary=_summary(app, spec), task_hash=task_hash(spec), spec=spec, examples=examples)


GET_TASK = ToolSpec(
    "get_task", fn=get_task, input_model=GetTaskInput, output_model=GetTaskOutput, read_only=True,
    description="A task's full spec and a few rendered clean/counterfactual pairs with labels; with `model`, also "
    "the tokens and resolved positions. Use it as a template for define_task.")
