"""Helpers for driving the server through a real MCP client."""

from __future__ import annotations

from typing import Any


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
