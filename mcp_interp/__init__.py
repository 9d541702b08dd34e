"""mcp-interp: an MCP server for mechanistic interpretability on real language models."""

__version__ = "0.1.0"
