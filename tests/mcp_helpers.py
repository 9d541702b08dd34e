"""Helpers for driving the server through a real MCP client."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image


async def call(client, name: str, args: dict[str, Any] | None = None, **kw) -> dict:
    """Call a tool that must succeed; return its structured content."""
    res = await client.call_tool(name, args or {}, **kw)
    assert not res.is_error, f"{name} failed: {res.content[0].text if res.content else res}"
    return res.structured_content


async def call_error(client, name: str, args: dict[str, Any]) -> str:
    """Call a tool that must fail; return the error text the agent sees."""
    res = await client.call_tool(name, args)
    assert res.is_error, f"{name} unexpectedly succeeded: {res.structured_content}"
    return res.content[0].text


async def finish(client, out: dict) -> dict:
    """Follow a heavy tool's job handle until it completes; return the result."""
    while out.get("status") in ("running", "queued"):
        job = await call(client, "get_job", {"job_id": out["job"]["job_id"], "wait_seconds": 30})
        if job["status"] == "complete":
            return job["result"]
        assert job["status"] in ("running", "queued"), job
    assert out["status"] == "complete", out
    return out["result"]


def png_of(res) -> Image.Image | None:
    """The one image block of a tool result, checked (PNG, within the size budget) and decoded; None without one."""
    images = [b for b in res.content if b.type == "image"]
    assert len(images) <= 1, "one main figure per result"
    assert res.content[0].type == "text", "the JSON (summary included) comes first"
    if not images:
        return None
    assert images[0].mime_type == "image/png"
    data = base64.b64decode(images[0].data)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) <= 150_000
    img = Image.open(io.BytesIO(data))
    img.load()  # decodes every pixel: a truncated or corrupt file raises here
    assert img.format == "PNG" and 200 <= max(img.size) <= 1000
    return img
