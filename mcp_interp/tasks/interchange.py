"""Interchange-intervention datasets for distributed alignment search (DAS).

An interchange example pairs a *base* prompt with a *source* prompt. The causal model says what the
output should be when one variable takes its value from the source while everything else comes
from the base (`CausalModel.interchange`): that output is the example's label. DAS then looks for a
subspace of one model site whose interchange (base activation, source values in the subspace)
makes the network produce that label.

Why the details matter:
- Held-out IIA is only evidence if the test prompts are new to the rotation, so the split is by
  *base prompt* (the rendered string): every example of one base prompt lands on the same side,
  and no test base prompt occurs in training (see `split_by_base`, tested).
- By default every pair changes the answer (`require_change`): a pair whose label equals the base
  answer is "solved" by doing nothing, and would let a random rotation score well.
- Base and source have the same token length (resampled until they do), so positions line up and
  the two runs can share a batch; named positions are resolved per prompt, so the base and source
  positions may still differ (e.g. S2 in two templates).
- Constraints restrict which prompts are sampled; the interchanged setting is never rendered, only
  its answer is read, so it is not required to satisfy them (IOI: IO from a source whose IO is the
  base's S is the classic "which name" intervention).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from .causal import CausalModel, Rendered, TaskSpecError
from .dataset import encode_prompt, encode_text, resolve_position
from .spec import TaskSpec
from .tokenizer import Tokenizer


@dataclass
class InterchangeExample:
    base_tokens: list[int]
    source_tokens: list[int]   # same length as base_tokens
    base_pos: int              # token index of the named position in the base prompt
    source_pos: int            # ... and in the source prompt
    label_id: int              # answer of the causal model with `variable` from the source
    base_answer_id: int        # answer of the base prompt (what doing nothing gives)
    source_answer_id: int
    base_key: str              # rendered base prompt: the unit of the train/test split
    source_prompt: str
    label: str
    base_answer: str
    base: dict[str, Any] = field(repr=False, default_factory=dict)
    source: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def changes_answer(self) -> bool:
        return self.label_id != self.base_answer_id


@dataclass
class InterchangeData:
    variable: str
    position: str
    source_position: str
    seed: int
    train: list[InterchangeExample]
    test: list[InterchangeExample]
    counterfactual: str | None = None   # generator used for sources, or None (fresh samples)
    require_change: bool = True
    task: str = ""

    def __len__(self) -> int:
        return len(self.train) + len(self.test)

    def split(self, name: str) -> list[InterchangeExample]:
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {name!r}")
        return self.train if name == "train" else self.test

    def summary(self) -> dict[str, Any]:
        return {"task": self.task, "variable": self.variable, "position": self.position,
                "source_position": self.source_position, "seed": self.seed,
                "n_train": len(self.train), "n_test": len(self.test),
                "n_train_bases": len({e.base_key for e in self.train}),
                "n_test_bases": len({e.base_key for e in self.test}),
                "counterfactual": self.counterfactual, "require_change": self.require_change,
                "answer_changed": sum(e.changes_answer for e in self.train + self.test) / max(len(self), 1)}


def split_by_base(examples: list[InterchangeExample], test_fraction: float,
                  seed: int) -> tuple[list[InterchangeExample], list[InterchangeExample]]:
    """Train/test split in which every base prompt's examples stay together (no test base in train).

    Whole base prompts go to test, in a seeded random order, until at least `test_fraction` of the
    examples are there; each side keeps at least one base prompt.
    """
    groups: dict[str, list[InterchangeExample]] = {}
    for e in examples:
        groups.setdefault(e.base_key, []).append(e)
    keys = sorted(groups)
    if len(keys) < 2:
        raise TaskSpecError("n", f"only {len(keys)} distinct base prompt(s): a held-out split needs at least 2")
    random.Random(seed).shuffle(keys)
    test_keys: set[str] = set()
    n_test = 0
    for k in keys[:-1]:  # the last key always stays in train
        if n_test >= test_fraction * len(examples):
            break
        test_keys.add(k)
        n_test += len(groups[k])
    if not test_keys:
        test_keys.add(keys[0])
    train = [e for e in examples if e.base_key not in test_keys]
    test = [e for e in examples if e.base_key in test_keys]
    return train, test


def _check_variable(spec: TaskSpec, model: CausalModel, variable: str, rng: random.Random) -> None:
    known = [*spec.variables, *spec.mechanisms]
    if variable not in known:
        raise TaskSpecError("variable", f"unknown variable {variable!r}; this task has {known}")
    for _ in range(200):
        base, src = model.sample(rng), model.sample(rng)
        if model.answer(model.interchange(base, src, variable)) != model.answer(base):
            return
    raise TaskSpecError(
        "variable", f"interchanging {variable!r} never changed the answer in 200 sampled base/source pairs: "
        f"the answer {spec.answer!r} does not depend on it, so there is nothing for DAS to align; "
        f"pick a variable the answer depends on")


def _position(spec: TaskSpec, name: str, rendered: Rendered, offsets, setting, n_tokens: int,
              field_name: str) -> int:
    if name == "END":
        return n_tokens - 1
    idx = resolve_position(spec.positions[name], rendered, offsets, setting)
    if idx is None:
        raise TaskSpecError(f"positions.{name}", f"position {name!r} ({field_name}) does not occur in "
                                                 f"{rendered.text!r}; fix `occurrence` or the templates")
    return idx


def _single(tokenizer: Tokenizer, text: str) -> int:
    ids = encode_text(tokenizer, text, "answer")[0]
    if len(ids) != 1:
        raise TaskSpecError("answer", f"the answer {text!r} is {len(ids)} tokens; DAS trains towards one "
                                      f"token: drop that value or change the answer template (a leading space "
                                      f"often makes a word one token)")
    return ids[0]


def build_interchange_dataset(spec: TaskSpec, tokenizer: Tokenizer, variable: str, n: int, seed: int = 0,
                              position: str = "END", source_position: str | None = None,
                              test_fraction: float = 0.25, counterfactual: str | None = None,
                              require_change: bool = True, sources_per_base: int = 1,
                              max_tries: int | None = None) -> InterchangeData:
    """n interchange examples for `variable` at a named position, split train/test by base prompt.

    Sources are fresh samples of the causal model, or made from the base by the spec's generator
    `counterfactual` (e.g. IOI's 's2_swap'). Each distinct base prompt gets `sources_per_base`
    sources. Deterministic in `seed`. Raises TaskSpecError(field, message) for an unknown variable
    or position, a variable the answer does not depend on, multi-token answers, and sources that
    never match the base prompt's token length.
    """
    if n < 2:
        raise TaskSpecError("n", f"n={n}: need at least 2 examples (one train, one test)")
    if not 0.0 < test_fraction < 1.0:
        raise TaskSpecError("test_fraction", f"{test_fraction} must be strictly between 0 and 1")
    source_position = source_position or position
    for fname, pname in (("position", position), ("source_position", source_position)):
        if pname not in spec.position_names():
            raise TaskSpecError(fname, f"unknown position {pname!r}; this task has {spec.position_names()}")
    cf_spec = None
    if counterfactual is not None:
        try:
            cf_spec = spec.counterfactual(counterfactual)
        except KeyError:
            names = [c.name for c in spec.counterfactuals]
            raise TaskSpecError("counterfactual", f"unknown counterfactual {counterfactual!r}; "
                                                  f"this task has {names}") from None
    model = CausalModel(spec)
    rng = random.Random(seed)
    _check_variable(spec, model, variable, random.Random(seed + 1))
    examples: list[InterchangeExample] = []
    seen: set[str] = set()
    length_misses = no_change = 0
    tries = max_tries or max(100 * n, 2000)
    for _ in range(tries):
        if len(examples) >= n:
            break
        base = model.sample(rng)
        rendered = model.render(base)
        if rendered.text in seen:
            continue
        tokens, offsets = encode_prompt(tokenizer, rendered.text)
        base_answer = model.answer(base)
        made: list[InterchangeExample] = []
        for _ in range(50 * sources_per_base):
            if len(made) == sources_per_base:
                break
            src = model.counterfactual(base, cf_spec, rng) if cf_spec is not None else model.sample(rng)
            if src is None:
                continue
            label = model.answer(model.interchange(base, src, variable))
            if require_change and label == base_answer:
                no_change += 1
                continue
            src_rendered = model.render(src)
            src_tokens, src_offsets = encode_prompt(tokenizer, src_rendered.text)
            if len(src_tokens) != len(tokens):
                length_misses += 1
                continue
            made.append(InterchangeExample(
                base_tokens=tokens, source_tokens=src_tokens,
                base_pos=_position(spec, position, rendered, offsets, base, len(tokens), "base"),
                source_pos=_position(spec, source_position, src_rendered, src_offsets, src, len(src_tokens),
                                     "source"),
                label_id=_single(tokenizer, label), base_answer_id=_single(tokenizer, base_answer),
                source_answer_id=_single(tokenizer, model.answer(src)), base_key=rendered.text,
                source_prompt=src_rendered.text, label=label, base_answer=base_answer, base=base, source=src))
        if len(made) < sources_per_base:
            continue
        seen.add(rendered.text)
        examples.extend(made[: n - len(examples)])
    if len(examples) < n:
        why = []
        if length_misses:
            why.append(f"{length_misses} sources differed from their base prompt in token length (DAS needs "
                       f"equal lengths: make the values and templates tokenize to the same length)")
        if no_change:
            why.append(f"{no_change} sources left the answer unchanged under the interchange of {variable!r}")
        raise TaskSpecError(
            "templates" if length_misses else "variable",
            f"only {len(examples)} of n={n} interchange examples could be built in {tries} tries"
            + (": " + "; ".join(why) if why else ": the variables do not have enough combinations of values")
            + "; lower n or add values")
    train, test = split_by_base(examples, test_fraction, seed)
    return InterchangeData(variable, position, source_position, seed, train, test,
                           counterfactual=counterfactual, require_change=require_change, task=spec.name)


__all__ = ["InterchangeData", "InterchangeExample", "build_interchange_dataset", "split_by_base"]
