"""Start-up (issue 26, item 15): the server answers the MCP handshake and its light requests without importing
torch, TransformerLens, transformers, sae-lens, matplotlib or scipy. One background thread imports them after the
first answer (or when a tool first needs them); every tool but the light ones waits for it."""

import ast
import os
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp_helpers import call, call_error

from mcp_interp.runtime.context import AppContext
from mcp_interp.server import warm_up
from mcp_interp.server.app import build_server
from mcp_interp.tools import TOOLS

HEAVY = ("torch", "transformer_lens", "transformers", "sae_lens", "matplotlib", "scipy")
ROOT = Path(__file__).resolve().parents[2]


def hiding_heavy_modules(tmp_path: Path) -> dict[str, str]:
    """The environment of a server in which importing any HEAVY module raises; the warm-up waits for the first tool
    that needs them."""
    hidden = tmp_path / "hidden"
    for name in HEAVY:
        (hidden / name).mkdir(parents=True)
        (hidden / name / "__init__.py").write_text(f"raise ImportError('{name} is hidden by the start-up test')\n")
    path = os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, warm_up.ENV: "0"}


@pytest.mark.anyio
async def test_handshake_and_light_requests_need_no_heavy_module(tmp_path):
    params = StdioServerParameters(command=sys.executable, env=hiding_heavy_modules(tmp_path), cwd=str(ROOT),
                                   args=["-m", "mcp_interp.server.cli", "--store", str(tmp_path / "store"), "serve"])
    async with Client(params, mode="legacy") as c:  # initialize, as Claude Code: the old server died importing torch
        assert {t.name for t in (await c.list_tools()).tools} == {s.name for s in TOOLS}
        assert "plan_experiment" in {p.name for p in (await c.list_prompts()).prompts}
        prompt = await c.get_prompt("plan_experiment", {"question": "Which heads move names?"})
        assert "Which heads move names?" in prompt.messages[0].content.text
        assert (await c.list_resources()).resources == []  # the store's files are templates (artifact://...)
        templates = (await c.list_resource_templates()).resource_templates
        assert any(t.uri_template.startswith("artifact://") for t in templates)
        assert (await call(c, "list_runs"))["runs"] == []
        assert (await call(c, "list_jobs"))["jobs"] == []
        assert "no_such_run" in await call_error(c, "get_run", {"run_id": "no_such_run"})
        # a heavy tool imports torch on its first call: here it cannot, says so, and the server goes on
        assert "hidden by the start-up test" in await call_error(c, "list_models", {})
        assert (await call(c, "list_runs"))["runs"] == []


def test_building_the_server_imports_no_heavy_module(tmp_path):
    code = ("import sys; from mcp_interp.server.app import build_server; from mcp_interp.runtime.context import "
            "AppContext; build_server(sys.argv[1]); AppContext.create(sys.argv[1]).store.list_runs(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert ast.literal_eval(out.stdout.strip().splitlines()[-1]) == []  # the old server imported all but sae_lens


def test_every_lazy_name_resolves():
    """The names a module defers (`lazy`, `lazy_exports`) are strings no import checks: a typo fails here."""
    import mcp_interp.server.app  # noqa: F401 (every tool module: their lazy names are registered)
    from mcp_interp import models
    from mcp_interp.methods import core, das, features, scrubbing

    assert mcp_interp.warm() == []
    for package in (core, das, features, models, scrubbing):
        missing = [n for n in package.__all__ if not hasattr(package, n)]
        assert not missing, f"{package.__name__}: {missing}"
        assert set(package.__all__) <= set(dir(package))


def test_app_parts_are_built_once_on_first_use(tmp_path):
    app = AppContext.create(tmp_path / "store")
    assert not {"pool", "tasks", "activations"} & set(vars(app))  # nothing that imports torch yet
    pools = []
    threads = [threading.Thread(target=lambda: pools.append(app.pool)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pools) == 4 and all(p is pools[0] for p in pools)
    assert "ioi" in app.tasks.names() and app.activations.hits == 0
    with pytest.raises(AttributeError):
        app.no_such_part


@pytest.fixture
def importer(monkeypatch):
    """A fresh importer for the server under test (this process imported everything long ago: it finishes fast)."""
    fresh = warm_up.Importer()
    monkeypatch.setattr(warm_up, "IMPORTER", fresh)
    return fresh


@pytest.mark.anyio
async def test_warm_up_starts_after_the_first_answer(store_dir, monkeypatch, importer):
    monkeypatch.setenv(warm_up.ENV, "1")
    async with Client(build_server(store_dir), mode="legacy") as c:
        await c.list_tools()
        with anyio.fail_after(120):
            while not importer.done.is_set():
                await anyio.sleep(0.05)
    # the server's exit waits for the importer: a thread left inside an import when Python exits can abort it
    assert not [t for t in threading.enumerate() if t.name == "mcp-interp-warm-up"]


@pytest.mark.anyio
async def test_light_tools_answer_at_once_and_heavy_ones_wait_for_the_imports(store_dir, monkeypatch, importer):
    monkeypatch.setenv(warm_up.ENV, "0")  # no warm-up after the first answer: the first heavy tool starts it
    async with Client(build_server(store_dir)) as c:
        assert (await call(c, "list_runs"))["runs"] == []
        assert (await call(c, "list_jobs"))["jobs"] == []
        assert importer._thread is None  # light tools neither start nor wait for it
        assert "ioi" in {t["name"] for t in (await call(c, "list_tasks"))["tasks"]}
        assert importer.done.is_set()  # list_tasks waited for it
    light = {s.name for s in TOOLS if s.light}
    assert light == {"list_runs", "get_run", "list_jobs", "get_job", "cancel_job"}
