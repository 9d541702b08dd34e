"""The one exception type whose message reaches the agent, and converters from lower layers."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError

__all__ = ["ToolError", "as_tool_error", "field_error", "refusal"]

# Exceptions raised below the tools that are refusals an agent can act on, by class name (jobs record a failure's
# type by name), with the prefix that names the field: everything else is an unexpected failure.
REFUSALS = {"ToolError": "", "ModelLoadError": "model: ", "TaskSpecError": "task.", "ExpressionError": "task: "}


def refusal(error_type: str | None, message: str) -> str | None:
    """The text an agent reads for a refusal of type `error_type` (None: not a refusal)."""
    prefix = REFUSALS.get(error_type or "")
    return None if prefix is None else prefix + message


def as_tool_error(e: BaseException) -> ToolError | None:
    """The ToolError for a refusal raised below the tools (its class or a base class is in REFUSALS), else None."""
    for cls in type(e).__mro__:
        if cls.__name__ in REFUSALS:
            return e if isinstance(e, ToolError) else ToolError(refusal(cls.__name__, str(e)))
    return None


def field_error(field: str, problem: str, fix: str) -> ToolError:
    """A ToolError in the house style: which field, what is wrong, what to do."""
    return ToolError(f"{field}: {problem}. Fix: {fix}")
