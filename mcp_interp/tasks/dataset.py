"""Turn a task spec into tokenized clean/counterfactual example pairs with resolved positions."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from . import expressions
from .causal import CausalModel, Rendered, TaskSpecError
from .spec import PositionSpec, TaskSpec
from .tokenizer import Tokenizer


@dataclass
class Example:
    base: dict[str, Any]
    cf: dict[str, Any]
    prompt: str
    cf_prompt: str
    tokens: list[int]
    cf_tokens: list[int]
    answer: str
    cf_answer: str
    answer_ids: list[int]  # tokens of the answer string; single-token metrics need len == 1
    cf_answer_ids: list[int]
    positions: dict[str, int]  # named position -> token index in the clean prompt
    good_ids: list[int] = field(default_factory=list)  # answer-set tasks
    bad_ids: list[int] = field(default_factory=list)
    cf_good_ids: list[int] = field(default_factory=list)
    cf_bad_ids: list[int] = field(default_factory=list)

    @property
    def answer_id(self) -> int:
        return self.answer_ids[0]

    @property
    def cf_answer_id(self) -> int:
        return self.cf_answer_ids[0]


@dataclass
class TaskDataset:
    spec: TaskSpec
    counterfactual: str
    seed: int
    examples: list[Example]
    position_names: list[str]
    unresolved: dict[str, list[int]] = field(default_factory=dict)  # position -> example indices

    def __len__(self) -> int:
        return len(self.examples)


def resolve_position(pos: PositionSpec, rendered: Rendered, offsets: list[tuple[int, int]],
                     setting: dict[str, Any]) -> int | None:
    """Token index of a named position in one prompt, or None if it does not occur."""
    if pos.variable is not None:
        value = str(setting[pos.variable])
        # A slot of any variable counts if it renders this variable's value (IO may appear via `first`).
        spans = [(s.start, s.end) for s in rendered.slots if s.name == pos.variable or s.text == value]
    else:
        spans, start = [], rendered.text.find(pos.text)
        while start >= 0:
            spans.append((start, start + len(pos.text)))
            start = rendered.text.find(pos.text, start + 1)
    try:
        start, end = spans[pos.occurrence]
    except IndexError:
        return None
    hits = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    if not hits:
        return None
    return hits[0] if pos.token == "first" else hits[-1]


def _answer_set_ids(spec: TaskSpec, tokenizer: Tokenizer, setting: dict[str, Any]) -> tuple[list[int], list[int]]:
    good, bad = [], []
    for c in spec.answer_set.candidates:  # type: ignore[union-attr]
        ids = tokenizer.encode(c)
        names = {**setting, "c": c}
        if expressions.evaluate(spec.answer_set.good, names):  # type: ignore[union-attr]
            good.append(ids[0])
        elif expressions.evaluate(spec.answer_set.bad, names):  # type: ignore[union-attr]
            bad.append(ids[0])
    return good, bad


def encode_text(tokenizer: Tokenizer, text: str, field_name: str) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        return tokenizer.encode_with_offsets(text)
    except ValueError as e:  # e.g. a character-level toy tokenizer meeting an unknown character
        raise TaskSpecError(field_name, f"the model's tokenizer cannot encode {text!r}: {e}") from None


def encode_prompt(tokenizer: Tokenizer, text: str,
                  field_name: str = "templates") -> tuple[list[int], list[tuple[int, int]]]:
    """A prompt's ids and spans, after the tokens the model expects first (the tokenizer's optional
    `prompt_prefix_ids`, e.g. Gemma's BOS; their spans are empty, so no named position resolves to them)."""
    ids, offsets = encode_text(tokenizer, text, field_name)
    prefix = list(getattr(tokenizer, "prompt_prefix_ids", None) or [])
    return prefix + ids, [(0, 0)] * len(prefix) + offsets


def build_dataset(spec: TaskSpec, tokenizer: Tokenizer, n: int, seed: int = 0,
                  counterfactual: str | None = None, distinct: bool = True, up_to: bool = False,
                  answer_changes: bool = False) -> TaskDataset:
    """n clean/counterfactual pairs with distinct clean prompts (when `distinct`), deterministic in seed. `up_to`:
    fewer than n when the task has fewer distinct prompts (at least one), instead of an error. `answer_changes`:
    only pairs whose counterfactual changes the answer (a logit difference needs two answers; e.g. parens'
    resample_all keeps the label in ~90 % of pairs)."""
    try:
        cf_spec = spec.counterfactual(counterfactual)
    except KeyError:
        names = [c.name for c in spec.counterfactuals]
        raise TaskSpecError("counterfactual",
                            f"unknown counterfactual {counterfactual!r}; this task has {names}") from None
    model = CausalModel(spec)
    rng = random.Random(seed)
    examples: list[Example] = []
    seen: set[str] = set()
    failures = unchanged = 0
    unresolved: dict[str, list[int]] = {}
    for _ in range(max(50 * n, 1000)):
        if len(examples) == n:
            break
        base = model.sample(rng)
        rendered = model.render(base)
        if distinct and rendered.text in seen:
            continue
        cf = model.counterfactual(base, cf_spec, rng)
        if cf is None:
            failures += 1
            continue
        if answer_changes and model.answer(base) == model.answer(cf):
            unchanged += 1
            continue
        seen.add(rendered.text)
        cf_rendered = model.render(cf)
        tokens, offsets = encode_prompt(tokenizer, rendered.text)
        cf_tokens, _ = encode_prompt(tokenizer, cf_rendered.text)
        positions = {}
        for pname, pspec in spec.positions.items():
            idx = resolve_position(pspec, rendered, offsets, base)
            if idx is None:
                unresolved.setdefault(pname, []).append(len(examples))
                idx = -1
            positions[pname] = idx
        positions["END"] = len(tokens) - 1
        answer, cf_answer = model.answer(base), model.answer(cf)
        ex = Example(base, cf, rendered.text, cf_rendered.text, tokens, cf_tokens, answer, cf_answer,
                     encode_text(tokenizer, answer, "answer")[0], encode_text(tokenizer, cf_answer, "answer")[0],
                     positions)
        if spec.answer_set is not None:
            ex.good_ids, ex.bad_ids = _answer_set_ids(spec, tokenizer, base)
            ex.cf_good_ids, ex.cf_bad_ids = _answer_set_ids(spec, tokenizer, cf)
        examples.append(ex)
    if len(examples) < n and not (up_to and examples) and unchanged and not failures:
        raise TaskSpecError(
            "counterfactual", f"only {len(examples)} of {n} pairs have a counterfactual {cf_spec.name!r} that changes "
            f"the answer ({unchanged} kept it), and a logit difference needs two answers. Fix: a counterfactual that "
            f"changes the answer, metric='prob', or a smaller n")
    if len(examples) < n and not (up_to and examples):
        why = (f"the counterfactual {cf_spec.name!r} failed the constraints {failures} times"
               if failures else "the variables do not have enough combinations of values")
        raise TaskSpecError(
            "variables", f"only {len(examples)} distinct examples could be generated for n={n} ({why}); "
            f"add values to the variables or lower n")
    return TaskDataset(spec, cf_spec.name, seed, examples, spec.position_names(), unresolved)
