"""Validate a task spec: statically, then against a model's tokenizer, before any weights run.

Every problem names the spec field, the offending examples and a fix, so an agent can act on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import expressions
from .causal import CausalModel, TaskSpecError
from .dataset import TaskDataset, build_dataset
from .spec import RESERVED_POSITIONS, TaskSpec, template_fields
from .tokenizer import Tokenizer

SINGLE_TOKEN_METRICS = ("logit_diff", "prob", "accuracy")


@dataclass
class Problem:
    field: str
    message: str
    examples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        ex = f" (e.g. {'; '.join(self.examples[:3])})" if self.examples else ""
        return f"{self.field}: {self.message}{ex}"


@dataclass
class ValidationReport:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        lines = [f"{len(self.errors)} problem(s) in the task spec:"] + [f"- {p}" for p in self.errors]
        return "\n".join(lines)


def check_static(spec: TaskSpec) -> list[Problem]:
    """Checks that need no tokenizer: names, expressions, templates, generators, positions."""
    problems: list[Problem] = []
    inputs = set(spec.variables)
    clash = inputs & set(spec.mechanisms)
    if clash:
        problems.append(Problem("mechanisms", f"{sorted(clash)} are both input variables and mechanisms; rename one"))
    known = inputs | set(spec.mechanisms)
    for name, mech in spec.mechanisms.items():
        try:
            if mech.expr is not None:
                expressions.check(mech.expr, known - {name})
            elif mech.key not in known:
                raise expressions.ExpressionError(f"key {mech.key!r} is not a variable; known: {sorted(known)}")
        except expressions.ExpressionError as e:
            problems.append(Problem(f"mechanisms.{name}", str(e)))
    for i, c in enumerate(spec.constraints):
        try:
            expressions.check(c, known)
        except expressions.ExpressionError as e:
            problems.append(Problem(f"constraints[{i}]", str(e)))
    for where, tpl in [*((f"templates[{i}]", t) for i, t in enumerate(spec.templates)), ("answer", spec.answer)]:
        try:
            unknown = [f for f, _ in template_fields(tpl) if f not in known]
        except ValueError as e:
            problems.append(Problem(where, f"malformed template {tpl!r}: {e}"))
            continue
        if unknown:
            problems.append(Problem(where, f"slot(s) {unknown} are not variables or mechanisms; "
                                           f"known: {sorted(known)}"))
    for cf in spec.counterfactuals:
        at = f"counterfactuals.{cf.name}"
        bad = [v for v in [*cf.variables, *cf.assign] if v not in inputs]
        if bad:
            problems.append(Problem(at, f"{bad} are not input variables (generators change inputs; "
                                        f"mechanisms follow); inputs: {sorted(inputs)}"))
        if cf.kind == "swap" and len(cf.variables) != 2:
            problems.append(Problem(at, "kind 'swap' needs exactly two `variables`"))
        if cf.kind == "resample" and not cf.variables:
            problems.append(Problem(at, "kind 'resample' needs `variables` (or use kind 'resample_all')"))
        if cf.kind == "assign":
            if not cf.assign:
                problems.append(Problem(at, "kind 'assign' needs `assign`: {variable: expression}"))
            for v, expr in cf.assign.items():
                try:
                    expressions.check(expr, known)
                except expressions.ExpressionError as e:
                    problems.append(Problem(f"{at}.assign.{v}", str(e)))
    if len({c.name for c in spec.counterfactuals}) != len(spec.counterfactuals):
        problems.append(Problem("counterfactuals", "counterfactual names must be unique"))
    for pname, pos in spec.positions.items():
        if pname in RESERVED_POSITIONS:
            problems.append(Problem(f"positions.{pname}", f"{pname} is built in (the last token); choose another name"))
        if pos.variable is not None and pos.variable not in known:
            problems.append(Problem(f"positions.{pname}.variable",
                                    f"{pos.variable!r} is not a variable; known: {sorted(known)}"))
    if spec.metric == "prob_diff" and spec.answer_set is None:
        problems.append(Problem("metric", "metric 'prob_diff' needs `answer_set` (candidates, good, bad)"))
    if spec.answer_set is not None:
        for part in ("good", "bad"):
            try:
                expressions.check(getattr(spec.answer_set, part), known | {"c"})
            except expressions.ExpressionError as e:
                problems.append(Problem(f"answer_set.{part}", str(e)))
    if not problems:
        try:
            CausalModel(spec)
        except TaskSpecError as e:
            problems.append(Problem(e.field, e.message))
    return problems


def _ex(ds: TaskDataset, i: int, what: str) -> str:
    return f"#{i} {ds.examples[i].prompt!r} -> {what}"


def check_with_tokenizer(spec: TaskSpec, tokenizer: Tokenizer, n: int = 32, seed: int = 0) -> ValidationReport:
    """Build n examples per counterfactual generator and check them against the tokenizer."""
    report = ValidationReport(errors=check_static(spec))
    if report.errors:
        return report
    report.errors += check_answer_set_tokens(spec, tokenizer)
    for cf in spec.counterfactuals:
        try:
            ds = build_dataset(spec, tokenizer, n, seed, cf.name)
        except TaskSpecError as e:
            report.errors.append(Problem(e.field, e.message))
            return report
        _check_dataset(spec, ds, report)
    return report


def _check_dataset(spec: TaskSpec, ds: TaskDataset, report: ValidationReport) -> None:
    at = f"counterfactuals.{ds.counterfactual}"
    if spec.metric in SINGLE_TOKEN_METRICS:
        multi = [i for i, e in enumerate(ds.examples) if len(e.answer_ids) != 1 or len(e.cf_answer_ids) != 1]
        if multi:
            report.errors.append(Problem(
                "answer", f"the answer is not a single token for {len(multi)} of {len(ds)} examples; metric "
                f"{spec.metric!r} needs one token: drop those values or change the answer template "
                f"(a leading space often makes a word one token)",
                [_ex(ds, i, f"{ds.examples[i].answer!r} = {len(ds.examples[i].answer_ids)} tokens") for i in multi]))
    for pname, idx in ds.unresolved.items():
        report.errors.append(Problem(
            f"positions.{pname}", f"cannot be resolved in {len(idx)} of {len(ds)} prompts: the variable or "
            f"text does not occur (or not that many times); fix `occurrence` or the templates",
            [_ex(ds, i, "not found") for i in idx]))
    if spec.counterfactual(ds.counterfactual).changes_answer:
        same = [i for i, e in enumerate(ds.examples) if e.answer == e.cf_answer]
        if same:
            report.errors.append(Problem(
                at, f"claims to change the answer but leaves it unchanged in {len(same)} of {len(ds)} examples; "
                f"fix the generator or set changes_answer: false",
                [_ex(ds, i, f"answer stays {ds.examples[i].answer!r}") for i in same]))
    unchanged = [i for i, e in enumerate(ds.examples) if e.prompt == e.cf_prompt]
    if unchanged:
        report.errors.append(Problem(at, f"produces a prompt identical to the base in {len(unchanged)} examples",
                                     [_ex(ds, i, "identical") for i in unchanged]))
    mismatched = [i for i, e in enumerate(ds.examples) if len(e.tokens) != len(e.cf_tokens)]
    report.stats[ds.counterfactual] = {
        "n": len(ds), "lengths": sorted({len(e.tokens) for e in ds.examples}),
        "length_mismatched_pairs": len(mismatched),
        "answer_changes": sum(e.answer != e.cf_answer for e in ds.examples) / len(ds),
    }
    if mismatched:
        report.warnings.append(Problem(
            at, f"clean and counterfactual prompts differ in token length in {len(mismatched)} of {len(ds)} "
            f"pairs; position-wise patching (locate) needs equal lengths",
            [_ex(ds, i, f"{len(ds.examples[i].tokens)} vs {len(ds.examples[i].cf_tokens)} tokens")
             for i in mismatched]))


def check_answer_set_tokens(spec: TaskSpec, tokenizer: Tokenizer) -> list[Problem]:
    if spec.answer_set is None:
        return []
    multi = [c for c in spec.answer_set.candidates if len(tokenizer.encode(c)) != 1]
    if not multi:
        return []
    return [Problem("answer_set.candidates", f"{len(multi)} candidates are not single tokens: {multi[:5]}")]


__all__ = ["Problem", "ValidationReport", "check_static", "check_with_tokenizer"]
