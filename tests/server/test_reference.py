"""The README's tool reference is generated from the published schemas and must not be stale."""

from pathlib import Path

from mcp_interp.server import reference


def test_readme_tool_reference_matches_published_schemas():
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text[text.index(reference.START):text.index(reference.END) + len(reference.END)]
    assert block == reference.render(), "README tool reference is stale: run python -m mcp_interp.server.reference"
