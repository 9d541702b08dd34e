"""The causal model a task spec describes: sampling, mechanisms, interventions, rendering."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Any

from . import expressions
from .expressions import excerpt
from .spec import MAX_PROMPT_CHARS, CounterfactualSpec, IntRange, TaskSpec, template_fields

TEMPLATE = "_template"  # implicit input variable: which template renders the setting


class TaskSpecError(ValueError):
    """A problem in a task spec, tied to the field that causes it."""

    def __init__(self, field: str, message: str, examples: list[Any] | None = None):
        self.field, self.message, self.examples = field, message, examples or []
        super().__init__(f"{field}: {message}")


@dataclass
class Slot:
    name: str
    text: str
    start: int
    end: int


@dataclass
class Rendered:
    text: str
    slots: list[Slot]


class CausalModel:
    """Input variables -> derived variables (mechanisms, in dependency order) -> prompt and answer."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.inputs = list(spec.variables)
        self.domains = {k: v.domain() for k, v in spec.variables.items()}
        self.order = self._topological_order()

    def _deps(self) -> dict[str, set[str]]:
        """mechanism -> the variables its expression (or lookup key) reads."""
        return {name: {mech.key} if mech.lookup is not None else set(expressions.names_used(mech.expr or ""))
                for name, mech in self.spec.mechanisms.items()}

    def ancestors(self, names) -> set[str]:
        """Every variable (input or derived) that `names` are computed from, transitively (names excluded)."""
        deps, out, todo = self._deps(), set(), list(names)
        while todo:
            for d in deps.get(todo.pop(), ()):
                if d not in out:
                    out.add(d)
                    todo.append(d)
        return out - set(names)

    def descendants(self, name: str) -> set[str]:
        """Every derived variable computed from `name`, transitively."""
        return {m for m in self.spec.mechanisms if name in self.ancestors([m])}

    def answer_variables(self) -> set[str]:
        """The variables the answer template names, and everything they are computed from."""
        import string

        named = {f for _, f, _, _ in string.Formatter().parse(self.spec.answer) if f}
        return named | self.ancestors(named)

    def _topological_order(self) -> list[str]:
        deps = self._deps()
        order, state = [], {}

        def visit(n: str, path: list[str]) -> None:
            if state.get(n) == "done" or n not in deps:
                return
            if state.get(n) == "visiting":
                raise TaskSpecError(f"mechanisms.{n}", f"cycle: {' -> '.join(path + [n])}")
            state[n] = "visiting"
            for d in sorted(deps[n]):
                visit(d, path + [n])
            state[n] = "done"
            order.append(n)

        for n in deps:
            visit(n, [])
        return order

    # --- settings -------------------------------------------------------------------------------
    def complete(self, inputs: dict[str, Any], fixed: dict[str, Any] | None = None) -> dict[str, Any]:
        """Inputs plus every derived variable; `fixed` pins variables (an intervention)."""
        setting = dict(inputs)
        setting.update(fixed or {})
        for name in self.order:
            if fixed and name in fixed:
                continue
            mech = self.spec.mechanisms[name]
            if mech.lookup is not None:
                key = str(setting[mech.key])
                if key not in mech.lookup:
                    raise TaskSpecError(f"mechanisms.{name}.lookup", f"no entry for {key!r}")
                setting[name] = mech.lookup[key]
            else:
                try:
                    setting[name] = expressions.evaluate(mech.expr, setting)
                except expressions.ExpressionError as e:
                    raise TaskSpecError(f"mechanisms.{name}.expr", str(e)) from None
        return setting

    def satisfies(self, setting: dict[str, Any]) -> bool:
        for i, c in enumerate(self.spec.constraints):
            try:
                ok = expressions.evaluate(c, setting)
            except expressions.ExpressionError as e:
                raise TaskSpecError(f"constraints[{i}]", str(e)) from None
            if not ok:
                return False
        return True

    def sample(self, rng: random.Random, max_tries: int = 1000) -> dict[str, Any]:
        for _ in range(max_tries):
            inputs = {k: rng.choice(self.domains[k]) for k in self.inputs}
            inputs[TEMPLATE] = rng.randrange(len(self.spec.templates))
            setting = self.complete(inputs)
            if self.satisfies(setting):
                return setting
        raise TaskSpecError("constraints", f"no setting satisfying the constraints found in {max_tries} samples")

    def input_part(self, setting: dict[str, Any]) -> dict[str, Any]:
        return {k: setting[k] for k in [*self.inputs, TEMPLATE]}

    def interchange(self, base: dict[str, Any], source: dict[str, Any], variable: str) -> dict[str, Any]:
        """The setting where `variable` takes its value from `source` (downstream recomputed)."""
        return self.complete(self.input_part(base), fixed={variable: source[variable]})

    # --- counterfactuals --------------------------------------------------------------------------
    def counterfactual(self, base: dict[str, Any], cf: CounterfactualSpec, rng: random.Random,
                       max_tries: int = 200) -> dict[str, Any] | None:
        """A counterfactual setting of `base` under generator `cf`, or None if none satisfies the constraints."""
        inputs = self.input_part(base)
        for _ in range(max_tries if cf.kind in ("resample", "resample_all") else 1):
            new = dict(inputs)
            if cf.kind == "resample":
                for v in cf.variables:
                    new[v] = _choice_other(rng, self.domains[v], inputs[v])
            elif cf.kind == "resample_all":
                for v in self.inputs:
                    new[v] = rng.choice(self.domains[v])
            elif cf.kind == "swap":
                a, b = cf.variables
                new[a], new[b] = inputs[b], inputs[a]
            else:
                for v, expr in cf.assign.items():
                    try:
                        new[v] = expressions.evaluate(expr, base)
                    except expressions.ExpressionError as e:
                        raise TaskSpecError(f"counterfactuals.{cf.name}.assign.{v}", str(e)) from None
            setting = self.complete(new)
            if self.satisfies(setting) and (cf.kind != "resample_all" or new != inputs):
                return setting
        return None

    # --- rendering --------------------------------------------------------------------------------
    def render(self, setting: dict[str, Any]) -> Rendered:
        template = self.spec.templates[setting[TEMPLATE]]
        return render_template(template, setting)

    def answer(self, setting: dict[str, Any]) -> str:
        return render_template(self.spec.answer, setting).text


def render_template(template: str, setting: dict[str, Any]) -> Rendered:
    """Fill a template's slots, recording each slot's character span (for named positions)."""
    out, slots, pos = [], [], 0
    for literal, field, spec, _ in string.Formatter().parse(template):
        out.append(literal)
        pos += len(literal)
        if field is None:
            continue
        try:
            template_fields("{%s:%s}" % (field, spec or ""))  # bounded widths, no nested fields
            text = format(setting[field], spec or "")
        except (ValueError, TypeError) as e:
            raise TaskSpecError("templates", f"slot {{{field}:{(spec or '')[:20]}}} cannot format the value "
                                f"{excerpt(setting.get(field), 40)}: {excerpt(str(e), 120)}. Fix: drop or change the "
                                f"format spec") from None
        slots.append(Slot(field, text, pos, pos + len(text)))
        out.append(text)
        pos += len(text)
        if pos > MAX_PROMPT_CHARS:
            raise TaskSpecError("templates", f"a rendered prompt is longer than {MAX_PROMPT_CHARS} characters. "
                                f"Fix: shorter templates or values")
    return Rendered("".join(out), slots)


def _choice_other(rng: random.Random, domain, current: Any) -> Any:
    """rng.choice over the domain without `current`, never listing the domain (a range may be huge); draws the
    same value as rng.choice([x for x in domain if x != current])."""
    n = len(domain)
    if current in domain and isinstance(domain, IntRange):
        i = rng.randrange(n - 1)
        value = domain[i]
        return value if value < current else domain[i + 1]
    return rng.choice([x for x in domain if x != current])


__all__ = ["CausalModel", "Rendered", "Slot", "TaskSpecError", "TEMPLATE", "render_template", "template_fields"]
