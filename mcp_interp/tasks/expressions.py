"""Restricted expressions for task mechanisms, constraints and counterfactual assignments.

Client text is never handed to Python's `eval`: expressions are parsed and interpreted by
simpleeval, which allows literals, arithmetic, comparisons, conditionals, subscripts, list/dict
literals and the small whitelist of pure functions below — no attribute access to dunders, no
imports, no calls to anything not listed.
"""

from __future__ import annotations

import ast
from typing import Any

from simpleeval import EvalWithCompoundTypes, InvalidExpression


class ExpressionError(ValueError):
    """An expression that does not parse, names an unknown variable, or fails to evaluate."""


def _balanced(s: str, open_: str = "(", close: str = ")") -> bool:
    depth = 0
    for ch in s:
        depth += (ch == open_) - (ch == close)
        if depth < 0:
            return False
    return depth == 0


def _max_depth(s: str, open_: str = "(", close: str = ")") -> int:
    depth = best = 0
    for ch in s:
        depth += (ch == open_) - (ch == close)
        best = max(best, depth)
    return best


def _distinct(*xs: Any) -> bool:
    return len(set(xs)) == len(xs)


FUNCTIONS = {
    "len": len, "int": int, "str": str, "abs": abs, "min": min, "max": max, "round": round,
    "sorted": sorted, "sum": sum, "any": any, "all": all, "bool": bool,
    "upper": lambda s: str(s).upper(), "lower": lambda s: str(s).lower(),
    "zfill": lambda x, n: str(x).zfill(int(n)),
    "balanced": _balanced, "max_depth": _max_depth, "distinct": _distinct,
    "count": lambda s, sub: str(s).count(str(sub)),
}
# Bounded so a hostile expression cannot build a huge string or number.
_MAX_LEN = 10_000


def parse(expr: str) -> ast.Expression:
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"cannot parse {expr!r}: {e.msg}") from None
    return tree


def names_used(expr: str) -> set[str]:
    """Variable names an expression reads (function names excluded)."""
    tree = parse(expr)
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - called


def check(expr: str, known: set[str]) -> None:
    """Raise ExpressionError if `expr` does not parse or reads a name that is not in `known`."""
    tree = parse(expr)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                raise ExpressionError(
                    f"{expr!r} calls {name!r}; allowed functions: {', '.join(sorted(FUNCTIONS))}"
                )
        if isinstance(node, ast.Attribute):
            raise ExpressionError(f"{expr!r} uses attribute access ({ast.unparse(node)}); use the functions "
                                  f"upper(x), lower(x), zfill(x, n) instead")
    unknown = names_used(expr) - known - {"True", "False", "None"}
    if unknown:
        raise ExpressionError(
            f"{expr!r} reads unknown name(s) {sorted(unknown)}; known: {sorted(known)}"
        )


def evaluate(expr: str, names: dict[str, Any]) -> Any:
    evaluator = EvalWithCompoundTypes(names=dict(names), functions=FUNCTIONS)
    try:
        value = evaluator.eval(expr.strip())
    except InvalidExpression as e:
        raise ExpressionError(f"{expr!r}: {e}") from None
    except Exception as e:  # errors of the expression itself (KeyError in a lookup, bad int(), ...)
        raise ExpressionError(f"{expr!r} failed with {type(e).__name__}: {e}") from None
    if isinstance(value, str | list | tuple | dict) and len(value) > _MAX_LEN:
        raise ExpressionError(f"{expr!r} produced a value longer than {_MAX_LEN}")
    return value
