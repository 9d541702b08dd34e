"""Every float a tool returns may be null where it can be undefined (issue 26 item 8): a NaN or an infinity in a
stored result would make the client reject the whole answer ("None is not of type 'number'"). A float field
that is not nullable must be defined by construction; this test lists those, with the reason, and fails on any
new non-nullable float so that its author decides."""

from __future__ import annotations

import typing

from pydantic import BaseModel

from mcp_interp.tools import TOOLS
from mcp_interp.tools.common import MaybeFloat

# model.field -> why it is always a finite number
ALWAYS_DEFINED = {
    "LayerQuality.dense_threshold": "an argument (a share in (0, 1))",
    "LayerQuality.scales": "the training's input / output scales: finite positive norms",
    "GeneratorStats.answer_changes": "a share of n >= 2 examples",
    "ListModelsOutput.memory_used_mb": "bytes the pool holds",
    "JobView.progress": "0..1, set by the job",
    "CounterfactualCheck.label_changes": "a share of n >= 2 examples",
    "BaselineResult.seconds": "wall time",
    "Circuit.target": "a constant (0.8)",
    "Circuit.fraction": "one of the curve's fixed fractions",
    "FaithfulnessCurve.fractions": "the fixed fractions",
    "ComparisonWithExact.top_k_overlap": "a share of k >= 1 units",
    "ComparisonWithExact.top_k_chance": "k / units",
    "ExactCost.seconds": "wall time",
    "InterpStat.mean_agreeing_inputs": "a mean count",
    "TrainDasResult.test_iia_pair": "an accuracy over the test pairs (n_test >= 2)",
    "TrainDasResult.base_accuracy": "an accuracy over the base prompts",
    "RankCurve.test_iia": "accuracies",
    "RankCurve.random_iia": "accuracies",
    "RankCurve.full_vector_iia": "an accuracy",
    "EpochPoint.train_iia": "an accuracy (argmax of any logits, NaN ones included, is an index)",
    "Pruning.train_iia": "accuracies",
    "DasData.test_fraction": "an argument",
    "RestartRun.final_train_iia": "an accuracy",
    "EvalDasResult.iia_pair": "an accuracy",
    "SaeQuality.dense_threshold": "an argument",
    "Throughput.collect_tokens_per_s": "tokens over a positive wall time",
    "Throughput.collect_seconds": "wall time",
    "Throughput.train_samples_per_s": "samples over a positive wall time",
    "Throughput.train_seconds": "wall time",
    "CompareFeaturesResult.expected_null": "a count times a rate",
    "CompareFeaturesResult.null_rate": "a share of null replicates",
    "CompareFeaturesResult.fdr": "an argument",
    "AlphaRow.alpha": "an argument (non-finite alphas are refused)",
    "Continuation.alpha": "an argument (non-finite alphas are refused)",
    "SteerResult.alphas": "arguments (non-finite alphas are refused)",
    "HeadAttention.unreachable": "shares of prompts",
    "LayerRow.C": "one of the probe's grid of inverse regularisation strengths",
    "LayerRow.control_C": "the same grid",
    "LayerRow.train_accuracy": "an accuracy over the training prompts",
    "TopToken.mean_prob": "a mean of softmax probabilities",
}


def _is_plain_float(annotation) -> bool:
    """float, list[float] or dict[str, float] with no None allowed anywhere."""
    if annotation is float:
        return True
    args = typing.get_args(annotation)
    if type(None) in args:
        return False
    origin = typing.get_origin(annotation)
    if origin in (list, dict) and args:
        return _is_plain_float(args[-1])
    return False


def _models(annotation):
    """The pydantic models an annotation refers to (through lists, dicts, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for a in typing.get_args(annotation):
        yield from _models(a)


def _plain_float_fields() -> set[str]:
    seen: set[type] = set()
    out: set[str] = set()

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            if _is_plain_float(field.annotation):
                out.add(f"{model.__name__}.{name}")
            for sub in _models(field.annotation):
                walk(sub)

    for spec in TOOLS:
        walk(spec.output_model)
    return out


def test_every_float_that_can_be_undefined_is_nullable():
    plain = _plain_float_fields()
    undecided = sorted(plain - set(ALWAYS_DEFINED))
    assert not undecided, (f"float fields that would reject NaN / infinity: {undecided}; make them MaybeFloat (and "
                           f"say in a warning why one is null) or add them to ALWAYS_DEFINED with the reason")
    stale = sorted(set(ALWAYS_DEFINED) - plain)
    assert not stale, f"ALWAYS_DEFINED names fields that are no longer plain floats: {stale}"


def test_maybe_float_turns_nan_and_infinity_into_null():
    class M(BaseModel):
        x: MaybeFloat
        xs: list[MaybeFloat]

    m = M(x=float("nan"), xs=[float("inf"), -float("inf"), 1.5])
    assert m.x is None and m.xs == [None, None, 1.5]
    schema = M.model_json_schema()["properties"]["x"]
    assert {"type": "null"} in schema["anyOf"]
