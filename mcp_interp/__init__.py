"""mcp-interp: an MCP server for mechanistic interpretability on real language models."""

__version__ = "0.1.0"
__all__ = ["Lab", "__version__"]


def __getattr__(name: str):
    # `from mcp_interp import Lab` without importing torch and the tools for every `import mcp_interp`
    if name == "Lab":
        from .server.lab import Lab
        return Lab
    raise AttributeError(f"module 'mcp_interp' has no attribute {name!r}")
