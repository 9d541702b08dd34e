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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpServer:
    """`mcp-interp serve --http` as a subprocess on a free loopback port; `url` is its MCP endpoint."""

    def __init__(self, store_dir, timeout: float = 180.0):
        self.store_dir, self.timeout = store_dir, timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def __enter__(self) -> "HttpServer":
        import socket
        import subprocess
        import sys
        import time

        self.proc = subprocess.Popen([sys.executable, "-m", "mcp_interp.server.cli", "--store", str(self.store_dir),
                                      "serve", "--http", "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + self.timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.__exit__(None, None, None)
                    raise AssertionError(f"server did not start: {self.proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.3)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()


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


def copy_spec(**over) -> dict:
    """A small task the toy model `toy/tiny-random` can host (copy the first letter), validated against it;
    `over` replaces fields."""
    spec = {
        "name": "toy-copy", "description": "copy the first letter",
        "variables": {"x": {"values": list("abcdef")}, "y": {"values": list("ghij")}},
        "templates": ["{x}{y}{y}:"], "answer": "{x}",
        "counterfactuals": [{"name": "rx", "kind": "resample", "variables": ["x"]}],
        "positions": {"X": {"variable": "x"}}, "default_n": 16, "validate_with_model": "toy/tiny-random",
    }
    spec.update(over)
    return spec
