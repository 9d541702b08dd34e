"""The one exception type whose message reaches the agent, and converters from lower layers."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError

__all__ = ["ToolError", "field_error"]


def field_error(field: str, problem: str, fix: str) -> ToolError:
    """A ToolError in the house style: which field, what is wrong, what to do."""
    return ToolError(f"{field}: {problem}. Fix: {fix}")
