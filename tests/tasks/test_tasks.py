"""Task specs, the restricted expression evaluator, counterfactuals and validation (no model needed)."""

import pytest
from pydantic import ValidationError

from mcp_interp.models.tokenizers import CharTokenizer
from mcp_interp.tasks import expressions
from mcp_interp.tasks.builtin import BUILTIN_TASKS
from mcp_interp.tasks.causal import CausalModel, TaskSpecError
from mcp_interp.tasks.dataset import build_dataset
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.tasks.validation import check_static, check_with_tokenizer

TOK = CharTokenizer("abcdefghijklmnopqrstuvwxyz0123456789 ()[]{}.,:;!?'-=")


def test_expressions_are_restricted():
    assert expressions.evaluate("a + 1 if b == 'x' else 0", {"a": 2, "b": "x"}) == 3
    assert expressions.evaluate("balanced('(()())')", {}) is True
    for hostile in ["__import__('os')", "open('/etc/passwd')", "a.__class__", "(1).__class__.__bases__"]:
        with pytest.raises(expressions.ExpressionError):
            expressions.check(hostile, {"a"})
        with pytest.raises(expressions.ExpressionError):
            expressions.evaluate(hostile, {"a": 1})
    with pytest.raises(expressions.ExpressionError, match="unknown name"):
        expressions.check("x + y", {"x"})


def test_builtin_tasks_are_statically_valid():
    for name, spec in BUILTIN_TASKS.items():
        assert check_static(spec) == [], name


def test_induction_dataset_and_positions():
    ds = build_dataset(BUILTIN_TASKS["induction"], TOK, n=20, seed=1)
    assert len(ds) == 20 and len({e.prompt for e in ds.examples}) == 20
    for e in ds.examples:
        assert e.prompt[:5] == e.prompt[6:11] and e.answer == e.prompt[5]
        # resample_x6 changes exactly the token at index 5 and the answer
        diff = [i for i, (a, b) in enumerate(zip(e.tokens, e.cf_tokens)) if a != b]
        assert diff == [5] and e.answer != e.cf_answer
        assert e.positions["FIRST_X6"] == 5 and e.positions["PREV_X5"] == 10 and e.positions["END"] == 10


def test_dataset_is_deterministic_in_seed():
    a = build_dataset(BUILTIN_TASKS["parens"], TOK, n=16, seed=3)
    b = build_dataset(BUILTIN_TASKS["parens"], TOK, n=16, seed=3)
    c = build_dataset(BUILTIN_TASKS["parens"], TOK, n=16, seed=4)
    assert [e.prompt for e in a.examples] == [e.prompt for e in b.examples]
    assert [e.prompt for e in a.examples] != [e.prompt for e in c.examples]
    for e in a.examples:
        s = e.prompt[:-1]
        depth, ok = 0, True
        for ch in s:
            depth += 1 if ch == "(" else -1
            ok &= depth >= 0
        assert e.answer == ("y" if ok and depth == 0 else "n")


def test_interchange_recomputes_downstream():
    spec = BUILTIN_TASKS["ioi"]
    cm = CausalModel(spec)
    base = cm.complete({"IO": "Mary", "S": "John", "order": "ABB", "place": "park", "object": "ball", "_template": 0})
    source = cm.complete({"IO": "Anna", "S": "Tom", "order": "BAB", "place": "store", "object": "book", "_template": 0})
    out = cm.interchange(base, source, "IO")
    assert out["IO"] == "Anna" and out["first"] == "Anna" and cm.answer(out) == " Anna"
    assert cm.render(base).text == "When Mary and John went to the park, John gave a ball to"


def test_s2_swap_changes_one_name():
    spec = BUILTIN_TASKS["ioi"]
    cm = CausalModel(spec)
    import random
    base = cm.complete({"IO": "Mary", "S": "John", "order": "ABB", "place": "park", "object": "ball", "_template": 0})
    cf = cm.counterfactual(base, spec.counterfactual("s2_swap"), random.Random(0))
    assert cm.render(cf).text == "When Mary and John went to the park, Mary gave a ball to"
    assert cm.answer(cf) == " John"


def _spec(**over):
    base = {
        "name": "toy-copy", "variables": {"x": {"values": ["a", "b", "c"]}, "y": {"values": ["d", "e"]}},
        "templates": ["{x}{y}="], "answer": "{x}",
        "counterfactuals": [{"name": "rx", "kind": "resample", "variables": ["x"]}],
        "positions": {"X": {"variable": "x"}},
    }
    base.update(over)
    return TaskSpec.model_validate(base)


def test_good_custom_spec_validates():
    report = check_with_tokenizer(_spec(), TOK, n=6)
    assert report.ok, report.summary()


@pytest.mark.parametrize("over, field", [
    ({"templates": ["{x}{z}="]}, "templates[0]"),
    ({"mechanisms": {"m": {"expr": "__import__('os')"}}}, "mechanisms.m"),
    ({"constraints": ["x.upper() == 'A'"]}, "constraints[0]"),
    ({"counterfactuals": [{"name": "bad", "kind": "swap", "variables": ["x"]}]}, "counterfactuals.bad"),
    ({"counterfactuals": [{"name": "ry", "kind": "resample", "variables": ["y"]}]}, "counterfactuals.ry"),
    ({"positions": {"Z": {"variable": "nope"}}}, "positions.Z.variable"),
    ({"positions": {"END": {"text": "="}}}, "positions.END"),
    ({"positions": {"Q": {"text": "?"}}}, "positions.Q"),
    ({"answer": "{x}{y}"}, "answer"),
    ({"templates": ["{x}{y}=Ü"]}, "templates"),
    ({"mechanisms": {"a": {"expr": "b"}, "b": {"expr": "a"}}}, "mechanisms."),
])
def test_bad_specs_name_the_field(over, field):
    report = check_with_tokenizer(_spec(**over), TOK, n=6)
    assert not report.ok
    assert any(p.field.startswith(field) for p in report.errors), report.summary()


def test_too_few_distinct_examples():
    report = check_with_tokenizer(_spec(), TOK, n=50)
    assert not report.ok and report.errors[0].field == "variables"
    assert "only 6 distinct" in report.errors[0].message


def test_pydantic_rejects_malformed_structure():
    with pytest.raises(ValidationError):
        _spec(variables={"x": {"values": ["a"]}})
    with pytest.raises(ValidationError):
        _spec(name="Has Spaces")
    with pytest.raises(ValidationError):
        _spec(counterfactuals=[{"name": "c", "kind": "explode"}])


def test_unknown_counterfactual_is_named():
    with pytest.raises(TaskSpecError, match="unknown counterfactual"):
        build_dataset(_spec(), TOK, n=2, counterfactual="nope")


def test_nested_repetition_and_list_sums_cannot_grow_past_the_limit():
    """Repetition counts nested elements in full and sum() adds numbers only, so no expression builds millions of
    elements (one such C call holds the GIL and freezes the server)."""
    import time

    from mcp_interp.tasks import expressions as E

    for bad in ("len(str([[1]*10000]*1000))", "len(sum([[1]*10000]*300, []))", "[[1]*100]*200",
                "len([[0]*50]*150 + [[0]*50]*150)", "sorted([[1]*5000]*3)"):
        t0 = time.perf_counter()
        with pytest.raises(E.ExpressionError, match="longer than|more than|numbers only"):
            E.evaluate(bad, {})
        assert time.perf_counter() - t0 < 0.5, bad
    assert E.evaluate("sum([1, 2, 3])", {}) == 6 and E.evaluate("sorted([3, 1])", {}) == [1, 3]
    assert E.evaluate("str(12) + 'a' * 3", {}) == "12aaa" and E.evaluate("[[0] * 3] * 2", {}) == [[0] * 3] * 2
