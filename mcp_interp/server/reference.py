"""Render the tool reference (README) from the schemas the server publishes, so the two cannot drift."""

from __future__ import annotations

import anyio

START, END = "<!-- tool-reference:start -->", "<!-- tool-reference:end -->"


def _type(schema: dict) -> str:
    if "enum" in schema:
        return " \\| ".join(repr(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " \\| ".join(_type(s) for s in schema["anyOf"])
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    t = schema.get("type", "object")
    if t == "array" and "items" in schema:
        return f"list[{_type(schema['items'])}]"
    return t


async def _tools() -> list:
    import tempfile

    from mcp import Client

    from .app import build_server
    with tempfile.TemporaryDirectory() as d:
        async with Client(build_server(d)) as c:
            return (await c.list_tools()).tools


def render() -> str:
    lines = [START, ""]
    for tool in anyio.run(_tools):
        lines += [f"### `{tool.name}`", "", tool.description or "", ""]
        props = tool.input_schema.get("properties", {})
        required = set(tool.input_schema.get("required", []))
        if props:
            lines += ["| argument | type | default | description |", "|---|---|---|---|"]
            for name, p in props.items():
                default = "required" if name in required else f"`{p.get('default')!r}`"
                desc = (p.get("description") or "").replace("|", "\\|").replace("\n", " ")
                lines.append(f"| `{name}` | {_type(p)} | {default} | {desc} |")
            lines.append("")
        out = (tool.output_schema or {}).get("properties", {})
        if out:
            lines += ["Returns: " + ", ".join(f"`{k}`" for k in out), ""]
    lines.append(END)
    return "\n".join(lines)


def update_readme(path: str = "README.md") -> bool:
    """Rewrite the reference block in the README; True if it changed."""
    with open(path) as f:
        text = f.read()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + render() + tail
    if new != text:
        with open(path, "w") as f:
            f.write(new)
    return new != text


if __name__ == "__main__":
    import sys
    sys.stdout.write("README.md updated\n" if update_readme() else "README.md already up to date\n")
