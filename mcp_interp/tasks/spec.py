"""The declarative task spec: the single source of truth for `define_task` input.

A task is a small causal model (input variables, derived variables computed by restricted
expressions or lookup tables, constraints), templates that render a setting into a prompt, the
answer it implies, counterfactual generators, named token positions, and the metric.
"""

from __future__ import annotations

import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Value = str | int
RESERVED_POSITIONS = ("END",)


class VariableSpec(BaseModel):
    """An input variable, sampled uniformly from `values` (or the inclusive integer `range`)."""

    model_config = ConfigDict(extra="forbid")
    values: list[Value] | None = Field(None, description="The values the variable takes.")
    range: tuple[int, int] | None = Field(None, description="Inclusive integer range [lo, hi], instead of values.")
    description: str = ""

    @model_validator(mode="after")
    def _one_source(self) -> VariableSpec:
        if (self.values is None) == (self.range is None):
            raise ValueError("give exactly one of `values` (a list) or `range` ([lo, hi])")
        if self.values is not None and len(set(self.values)) < 2:
            raise ValueError("a variable needs at least 2 distinct values")
        if self.range is not None and self.range[1] <= self.range[0]:
            raise ValueError(f"range {list(self.range)} is empty or a single value; use lo < hi")
        return self

    def domain(self) -> list[Value]:
        if self.values is not None:
            return list(dict.fromkeys(self.values))
        lo, hi = self.range  # type: ignore[misc]
        return list(range(lo, hi + 1))


class MechanismSpec(BaseModel):
    """A derived variable: a restricted expression over other variables, or a lookup table."""

    model_config = ConfigDict(extra="forbid")
    expr: str | None = Field(None, description="Restricted expression, e.g. \"IO if order == 'ABB' else S\".")
    lookup: dict[str, Value] | None = Field(None, description="Table from str(value of `key`) to value.")
    key: str | None = Field(None, description="The variable whose value indexes `lookup`.")
    description: str = ""

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
    variables: list[str] = Field(default_factory=list)
    assign: dict[str, str] = Field(default_factory=dict, description="variable -> expression over the base setting")
    changes_answer: bool = Field(True, description="Claim: this generator always changes the answer. Checked.")
    description: str = ""


class PositionSpec(BaseModel):
    """A named token position, resolved per example from tokenizer offsets."""

    model_config = ConfigDict(extra="forbid")
    variable: str | None = Field(None, description="Where a template slot rendering this variable's value appears.")
    text: str | None = Field(None, description="A literal substring of the prompt, instead of a variable.")
    occurrence: int = Field(0, description="Which occurrence: 0 first, 1 second, -1 last.")
    token: Literal["first", "last"] = Field("last", description="Which token of a multi-token span.")

    @model_validator(mode="after")
    def _one_anchor(self) -> PositionSpec:
        if (self.variable is None) == (self.text is None):
            raise ValueError("give exactly one of `variable` or `text`")
        return self


class AnswerSetSpec(BaseModel):
    """For tasks whose answer is a set of tokens (e.g. greater-than): metric prob_diff."""

    model_config = ConfigDict(extra="forbid")
    candidates: list[str] = Field(..., min_length=2, description="Single-token answer strings.")
    good: str = Field(..., description="Expression over the variables and `c` (a candidate): true if correct.")
    bad: str = Field(..., description="Expression over the variables and `c`: true if wrong.")


Metric = Literal["logit_diff", "prob", "accuracy", "prob_diff"]


class TaskSpec(BaseModel):
    """A causal task: variables, mechanisms, templates, answer, counterfactuals, positions, metric."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$", description="Lowercase id, e.g. 'ioi'.")
    description: str = ""
    variables: dict[str, VariableSpec] = Field(..., min_length=1, description="Input variables: name -> {values: [...]} "
                                               "or {range: [lo, hi]}; sampled uniformly.")
    mechanisms: dict[str, MechanismSpec] = Field(default_factory=dict, description="Derived variables: name -> {expr: "
                                                 "restricted expression} or {lookup: {key value: value}, key: variable}.")
    constraints: list[str] = Field(default_factory=list, description="Expressions every setting must satisfy.")
    templates: list[str] = Field(..., min_length=1, description="Prompt templates with {variable} slots.")
    answer: str = Field(..., description="Answer template, e.g. ' {IO}' (mind the leading space).")
    answer_set: AnswerSetSpec | None = Field(None, description="For metric prob_diff: {candidates, good, bad}.")
    counterfactuals: list[CounterfactualSpec] = Field(..., min_length=1, description="Generators: {name, kind: "
                                                      "resample|resample_all|swap|assign, variables, assign, changes_answer}.")
    positions: dict[str, PositionSpec] = Field(default_factory=dict, description="Named positions: name -> {variable "
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
            raise ValueError(f"slot {{{field}}} must be a plain variable name")
        if conv:
            raise ValueError(f"slot {{{field}!{conv}}}: conversions are not allowed")
        out.append((field, spec or ""))
    return out
