"""define_task through MCP: tokenizer-dependent errors point at validate_with_model."""

import pytest
from mcp import Client
from mcp_helpers import call_error

from mcp_interp.server.app import build_server

pytestmark = pytest.mark.anyio



def spec(**over):
    s = {"name": "toy-copy2", "description": "copy the first letter",
         "variables": {"x": {"values": list("abcdef")}, "y": {"values": list("ghij")}},
         "templates": ["{x}{y}{y}:"], "answer": "{x}",
         "counterfactuals": [{"name": "rx", "kind": "resample", "variables": ["x"]}],
         "positions": {"X": {"variable": "x"}}, "default_n": 16, "validate_with_model": "toy/tiny-random"}
    s.update(over)
    return s


async def test_tokenisation_errors_suggest_validate_with_model(store_dir):
    async with Client(build_server(store_dir)) as c:
        text = await call_error(c, "define_task", spec(templates=["{x}{y}{y}:Ü"]))  # the char tokenizer lacks Ü
        assert "templates" in text and "validate_with_model" in text and "toy/tiny-random" in text
        # A problem the tokenizer has nothing to do with gets no such hint.
        text = await call_error(c, "define_task", spec(counterfactuals=[
            {"name": "same", "kind": "assign", "assign": {"x": "x"}}]))
        assert "validate_with_model" not in text
