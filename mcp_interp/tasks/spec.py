"""The declarative task spec: the single source of truth for `define_task` input.

A task is a small causal model (input variables, derived variables computed by restricted
expressions or lookup tables, constraints), templates that render a setting into a prompt, the
answer it implies, counterfactual generators, named token positions, and the metric.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# What one request may cost is bounded here: every size of a spec has a limit, so validating a task
# (rendering and tokenizing up to 50 x n prompts) answers in bounded time and memory.
MAX_TEMPLATE_CHARS = 2000
MAX_PROMPT_CHARS = 8000
MAX_FORMAT_WIDTH = 64
MAX_VALUES = 10_000
MAX_RANGE_ABS = 10**15
Value = int | Annotated[str, StringConstraints(max_length=500)]
Expr = Annotated[str, StringConstraints(max_length=1000)]
Name = Annotated[str, StringConstraints(max_length=64)]
Text = Annotated[str, StringConstraints(max_length=2000)]
RESERVED_POSITIONS = ("END",)


class IntRange:
    """The inclusive integer range [lo, hi] as a sequence, sampled without listing it."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo + 1

    def __getitem__(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return self.lo + (i % n)

    def __iter__(self):
        return iter(range(self.lo, self.hi + 1))

    def __contains__(self, x: object) -> bool:
        return isinstance(x, int) and self.lo <= x <= self.hi


class VariableSpec(BaseModel):
    """An input variable, sampled uniformly from `values` (or the inclusive integer `range`)."""

    model_config = ConfigDict(extra="forbid")
    values: list[Value] | None = Field(None, max_length=MAX_VALUES, description="The values the variable takes.")
    range: tuple[int, int] | None = Field(None, description="Inclusive integer range [lo, hi], instead of values "
                                          "(sampled, never listed; |lo|, |hi| <= 1e15).")
    description: Text = ""

    @model_validator(mode="after")
    def _one_source(self) -> VariableSpec:
        if (self.values is None) == (self.range is None):
            raise ValueError("give exactly one of `values` (a list) or `range` ([lo, hi])")
        if self.values is not None and len(set(self.values)) < 2:
            raise ValueError("a variable needs at least 2 distinct values")
        if self.range is not None and self.range[1] <= self.range[0]:
            raise ValueError(f"range {list(self.range)} is empty or a single value; use lo < hi")
        if self.range is not None and max(abs(self.range[0]), abs(self.range[1])) > MAX_RANGE_ABS:
            raise ValueError(f"range bounds are limited to +-{MAX_RANGE_ABS:.0e}")
        return self

    def domain(self) -> list[Value] | IntRange:
        """The values, in order; a `range` stays an `IntRange` (indexable, never materialised)."""
        if self.values is not None:
            return list(dict.fromkeys(self.values))
        lo, hi = self.range  # type: ignore[misc]
        return IntRange(lo, hi)


class MechanismSpec(BaseModel):
    """A derived variable: a restricted expression over other variables, or a lookup table."""

    model_config = ConfigDict(extra="forbid")
    expr: Expr | None = Field(None, description="Restricted expression, e.g. \"IO if order == 'ABB' else S\".")
    lookup: dict[str, Value] | None = Field(None, max_length=MAX_VALUES,
                                            description="Table from str(value of `key`) to value.")
    key: Name | None = Field(None, description="The variable whose value indexes `lookup`.")
    description: Text = ""

    @model_validator(mode="after")
    def _one_kind(self) -> MechanismSpec:
        if (self.expr is None) == (self.lookup is None):
            raise ValueError("give exactly one of `expr` or `lookup` (with `key`)")
        if self.lookup is not None and not self.key:
            raise ValueError("a `lookup` mechanism needs `key`: the variable that indexes the table")
        return self


class CounterfactualSpec(BaseModel):
    """How to turn a base setting into a counterfactual one."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    kind: Literal["resample", "resample_all", "swap", "assign"] = Field(
        ..., description="resample: new values (each different) for `variables`; resample_all: every input "
        "variable; swap: exchange the two `variables`; assign: set variables to expressions of the base setting."
    )
    variables: list[Name] = Field(default_factory=list, max_length=64)
    assign: dict[Name, Expr] = Field(default_factory=dict, max_length=64,
                                     description="variable -> expression over the base setting")
    changes_answer: bool = Field(True, description="Claim: this generator always changes the answer. Checked.")
    description: Text = ""


class PositionSpec(BaseModel):
    """A named token position, resolved per example from tokenizer offsets."""

    model_config = ConfigDict(extra="forbid")
    variable: Name | None = Field(None, description="Where a template slot rendering this variable's value appears.")
    text: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = Field(
        None, description="A literal substring of the prompt, instead of a variable.")
    occurrence: int = Field(0, ge=-1000, le=1000, description="Which occurrence: 0 first, 1 second, -1 last.")
    token: Literal["first", "last"] = Field("last", description="Which token of a multi-token span.")

    @model_validator(mode="after")
    def _one_anchor(self) -> PositionSpec:
        if (self.variable is None) == (self.text is None):
            raise ValueError("give exactly one of `variable` or `text`")
        return self


class AnswerSetSpec(BaseModel):
    """For tasks whose answer is a set of tokens (e.g. greater-than): metric prob_diff."""

    model_config = ConfigDict(extra="forbid")
    candidates: list[Annotated[str, StringConstraints(max_length=100)]] = Field(
        ..., min_length=2, max_length=1000, description="Single-token answer strings.")
    good: Expr = Field(..., description="Expression over the variables and `c` (a candidate): true if correct.")
    bad: Expr = Field(..., description="Expression over the variables and `c`: true if wrong.")


Metric = Literal["logit_diff", "prob", "accuracy", "prob_diff"]


class TaskSpec(BaseModel):
    """A causal task: variables, mechanisms, templates, answer, counterfactuals, positions, metric."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$", description="Lowercase id, e.g. 'ioi'.")
    description: Text = ""
    variables: dict[Name, VariableSpec] = Field(..., min_length=1, max_length=64,
                                                description="Input variables: name -> {values: [...]} "
                                               "or {range: [lo, hi]}; sampled uniformly.")
    mechanisms: dict[Name, MechanismSpec] = Field(default_factory=dict, max_length=64,
                                                  description="Derived variables: name -> {expr: "
                                                 "restricted expression} or {lookup: {key value: value}, "
                                                 "key: variable}.")
    constraints: list[Expr] = Field(default_factory=list, max_length=64,
                                    description="Expressions every setting must satisfy.")
    templates: list[Annotated[str, StringConstraints(max_length=MAX_TEMPLATE_CHARS)]] = Field(
        ..., min_length=1, max_length=256, description="Prompt templates with {variable} slots (at most "
        f"{MAX_TEMPLATE_CHARS} characters each; format specs like {{x:>3}} allow widths up to {MAX_FORMAT_WIDTH}).")
    answer: Annotated[str, StringConstraints(max_length=200)] = Field(
        ..., description="Answer template, e.g. ' {IO}' (mind the leading space).")
    answer_set: AnswerSetSpec | None = Field(None, description="For metric prob_diff: {candidates, good, bad}.")
    counterfactuals: list[CounterfactualSpec] = Field(..., min_length=1, max_length=32,
                                                      description="Generators: {name, kind: "
                                                      "resample|resample_all|swap|assign, variables, assign, "
                                                      "changes_answer}.")
    positions: dict[Name, PositionSpec] = Field(default_factory=dict, max_length=64,
                                                description="Named positions: name -> {variable "
                                               "or text, occurrence, token: first|last}. END (last token) is implicit.")
    metric: Metric = Field("logit_diff", description="logit_diff (answer vs counterfactual answer), prob, accuracy, "
                           "or prob_diff (needs answer_set).")
    default_n: int = Field(32, ge=2, le=4096, description="Examples used to validate the spec (and a sensible n).")

    def counterfactual(self, name: str | None) -> CounterfactualSpec:
        if name is None:
            return self.counterfactuals[0]
        for cf in self.counterfactuals:
            if cf.name == name:
                return cf
        raise KeyError(name)

    def position_names(self) -> list[str]:
        return [*self.positions, "END"]


def template_fields(template: str) -> list[tuple[str, str]]:
    """(field name, format spec) of each {slot} in a template, in order; raises ValueError if malformed."""
    out = []
    for _, field, spec, conv in string.Formatter().parse(template):
        if field is None:
            continue
        if not field.isidentifier():
            # Forbids {x.attr} and {x[0]}: format() field access would reach object attributes.
            raise ValueError(f"slot {{{field[:40]}}} must be a plain variable name")
        if conv:
            raise ValueError(f"slot {{{field}!{conv[:10]}}}: conversions are not allowed")
        spec = spec or ""
        if "{" in spec or "}" in spec:
            raise ValueError(f"slot {{{field}:...}}: nested fields in a format spec are not allowed")
        if len(spec) > 20 or any(int(d) > MAX_FORMAT_WIDTH for d in re.findall(r"\d+", spec)):
            raise ValueError(f"slot {{{field}:{spec[:20]}}}: format widths and precisions are limited to "
                             f"{MAX_FORMAT_WIDTH}")
        out.append((field, spec))
    return out
