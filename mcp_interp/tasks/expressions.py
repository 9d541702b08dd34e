"""Restricted expressions for task mechanisms, constraints and counterfactual assignments.

Client text is never handed to Python's `eval`: expressions are parsed and interpreted by
simpleeval, which allows literals, arithmetic, comparisons, conditionals, subscripts, list/dict
literals and the small whitelist of pure functions below — no attribute access to dunders, no
imports, no calls to anything not listed.
"""

from __future__ import annotations

import ast
import operator
from typing import Any

from simpleeval import DEFAULT_OPERATORS, EvalWithCompoundTypes, InvalidExpression


class ExpressionError(ValueError):
    """An expression that does not parse, names an unknown variable, or fails to evaluate."""


def excerpt(text: Any, limit: int = 80) -> str:
    """repr() of `text`, cut to about `limit` characters: errors never echo a large input back."""
    r = repr(text)
    return r if len(r) <= limit else f"{r[:limit]}... ({len(str(text))} chars)"


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


# Bounded so a hostile expression cannot build a huge string or number (one big-integer power holds the GIL
# for as long as it runs, freezing every other request of the server).
_MAX_LEN = 10_000
MAX_INT_BITS = 4096
MAX_EXPR_CHARS = 1000


class ValueTooLarge(ArithmeticError):
    pass


def _bits(x: Any) -> int:
    return abs(x).bit_length() if isinstance(x, int) else 0


def _check_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ValueTooLarge(f"integers are limited to {MAX_INT_BITS} bits")
    return value


def _pow(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1 and _bits(a) * b > MAX_INT_BITS:
        raise ValueTooLarge(f"the power is larger than {MAX_INT_BITS} bits")
    if isinstance(b, int | float) and abs(b) > MAX_INT_BITS:
        raise ValueTooLarge(f"exponents are limited to {MAX_INT_BITS}")
    return _check_int(a ** b)


def _size(x: Any, budget: int = _MAX_LEN + 1) -> int:
    """Elements (characters) in `x`, nested containers counted through; stops counting past `budget`."""
    if isinstance(x, str | bytes):
        return len(x)
    if isinstance(x, dict):
        x = [*x.keys(), *x.values()]
    if not isinstance(x, list | tuple | set | frozenset):
        return 1
    total = 0
    for item in x:
        total += _size(item, budget - total)
        if total >= budget:
            break
    return max(total, len(x))


def _bounded(x: Any, what: str) -> Any:
    if _size(x) > _MAX_LEN:
        raise ValueTooLarge(f"{what} would hold more than {_MAX_LEN} elements")
    return x


def _mult(a: Any, b: Any) -> Any:
    for seq, k in ((a, b), (b, a)):
        # nested sequences count in full: [[1]*10000]*1000 is ten million elements, not a thousand
        if hasattr(seq, "__len__") and isinstance(k, int) and k * _size(seq) > _MAX_LEN:
            raise ValueTooLarge(f"a repeated sequence would be longer than {_MAX_LEN}")
    if isinstance(a, int) and isinstance(b, int) and _bits(a) + _bits(b) > MAX_INT_BITS + 1:
        raise ValueTooLarge(f"the product is larger than {MAX_INT_BITS} bits")
    return a * b


def _lshift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and _bits(a) + b > MAX_INT_BITS:
        raise ValueTooLarge(f"the shift is larger than {MAX_INT_BITS} bits")
    return a << b


def _add(a: Any, b: Any) -> Any:
    if hasattr(a, "__len__") and hasattr(b, "__len__") and _size(a) + _size(b) > _MAX_LEN:
        raise ValueTooLarge(f"a concatenation would be longer than {_MAX_LEN}")
    return _check_int(a + b)


OPERATORS = {**DEFAULT_OPERATORS, ast.Pow: _pow, ast.Mult: _mult, ast.LShift: _lshift, ast.Add: _add,
             ast.Sub: lambda a, b: _check_int(operator.sub(a, b))}


def _zfill(x: Any, n: Any) -> str:
    if int(n) > _MAX_LEN:
        raise ValueTooLarge(f"zfill width is limited to {_MAX_LEN}")
    return str(x).zfill(int(n))


def _sum(xs: Any, start: Any = 0) -> Any:
    """sum() of numbers only: summing lists is quadratic concatenation, a way round the size limits."""
    items = list(xs)
    if not all(isinstance(v, int | float | bool) for v in [*items, start]):
        raise ValueTooLarge("sum() adds numbers only")
    return _check_int(sum(items, start))


FUNCTIONS = {
    "len": len, "int": int, "abs": abs, "min": min, "max": max, "round": round,
    "str": lambda x="": str(_bounded(x, "str()'s argument")),
    "sorted": lambda x: sorted(_bounded(x, "sorted()'s argument")),
    "sum": _sum, "any": any, "all": all, "bool": bool,
    "upper": lambda s: str(s).upper(), "lower": lambda s: str(s).lower(),
    "zfill": _zfill,
    "balanced": _balanced, "max_depth": _max_depth, "distinct": _distinct,
    "count": lambda s, sub: str(s).count(str(sub)),
}


def parse(expr: str) -> ast.Expression:
    if len(expr) > MAX_EXPR_CHARS:
        raise ExpressionError(f"{excerpt(expr)} is longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ExpressionError(f"cannot parse {excerpt(expr)}: {getattr(e, 'msg', None) or type(e).__name__}") from None
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
                    f"{excerpt(expr)} calls {excerpt(name, 40)}; allowed functions: {', '.join(sorted(FUNCTIONS))}"
                )
        if isinstance(node, ast.Attribute):
            raise ExpressionError(f"{excerpt(expr)} uses attribute access ({excerpt(ast.unparse(node), 40)}); "
                                  "use the functions "
                                  f"upper(x), lower(x), zfill(x, n) instead")
    unknown = names_used(expr) - known - {"True", "False", "None"}
    if unknown:
        raise ExpressionError(
            f"{excerpt(expr)} reads unknown name(s) {excerpt(sorted(unknown))}; known: {sorted(known)}"
        )


def evaluate(expr: str, names: dict[str, Any]) -> Any:
    evaluator = EvalWithCompoundTypes(operators=OPERATORS, names=dict(names), functions=FUNCTIONS)
    try:
        value = evaluator.eval(expr.strip())
    except InvalidExpression as e:
        raise ExpressionError(f"{excerpt(expr)}: {excerpt(getattr(e, 'message', str(e)), 200)}") from None
    except Exception as e:  # errors of the expression itself (KeyError in a lookup, bad int(), too large, ...)
        raise ExpressionError(f"{excerpt(expr)} failed with {type(e).__name__}: {excerpt(str(e), 200)}") from None
    if isinstance(value, str | list | tuple | dict) and len(value) > _MAX_LEN:
        raise ExpressionError(f"{excerpt(expr)} produced a value longer than {_MAX_LEN}")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ExpressionError(f"{excerpt(expr)} produced an integer larger than {MAX_INT_BITS} bits")
    return value
