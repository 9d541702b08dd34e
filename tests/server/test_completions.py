"""completion/complete through a real MCP client: prompt arguments and artifact-template variables."""

import pytest
from mcp import Client
from mcp.types import PromptReference, ResourceTemplateReference
from mcp_helpers import call, finish

from mcp_interp.server.app import build_server

pytestmark = pytest.mark.anyio


def prompt(name="run_experiment"):
    return PromptReference(type="ref/prompt", name=name)


def template(ext):
    return ResourceTemplateReference(type="ref/resource", uri=f"artifact://{{run_id}}/{{name}}{ext}")


async def values(c, ref, name, value, **resolved):
    res = await c.complete(ref, {"name": name, "value": value}, resolved or None)
    assert res.completion.total == len(res.completion.values) and res.completion.has_more is False
    return res.completion.values


async def test_completions_of_prompts_and_artifact_templates(store_dir):
    async with Client(build_server(store_dir)) as c:
        assert c.server_capabilities.completions is not None  # advertised to the client
        # before any run: tasks and models, prefix-filtered; no run ids
        assert await values(c, prompt(), "task", "plan") == ["planted", "planted-direction", "planted-features",
                                                               "planted-switch", "planted-trace"]
        assert "ioi" in await values(c, prompt("plan_experiment"), "task", "")
        models = await values(c, prompt(), "model", "toy/tiny")
        assert models == ["toy/tiny-attn-only", "toy/tiny-random"]
        assert "smollm2-135m" in await values(c, prompt(), "model", "")
        assert await values(c, prompt("interpret_experiment"), "run_ids", "") == []
        assert await values(c, prompt(), "question", "why") == []
        runs = []
        for n in (8, 10):
            runs.append((await finish(c, await call(c, "run_baseline", {"model": "toy/tiny-random", "task": "induction",
                                                                        "n": n, "wait_seconds": 120})))["run_id"])
        files = (await call(c, "get_run", {"run_id": runs[0]}))["files"]
        pngs = sorted(f[:-4] for f in files if f.endswith(".png") and "/" not in f)
        assert pngs, files
        # run ids: newest first, prefix-filtered, only runs holding a file of the template's extension
        assert await values(c, template(".png"), "run_id", "") == runs[::-1]
        assert await values(c, template(".png"), "run_id", runs[0]) == [runs[0]]
        assert await values(c, template(".csv"), "run_id", "") == []
        # file names of the run named among the resolved arguments, without the extension the template adds
        assert await values(c, template(".png"), "name", "", run_id=runs[0]) == pngs
        assert await values(c, template(".png"), "name", pngs[0][:3], run_id=runs[0]) == \
            [p for p in pngs if p.startswith(pngs[0][:3])]
        assert await values(c, template(".json"), "name", "resu", run_id=runs[0]) == ["result"]
        assert await values(c, template(".png"), "name", "", run_id="no-such-run") == []
        assert await values(c, template(".png"), "name", "") == []  # no run_id yet: nothing to list
        # the prompt's comma-separated run_ids: the last item is completed, those already given are left out
        assert await values(c, prompt("interpret_experiment"), "run_ids", "") == runs[::-1]
        assert await values(c, prompt("interpret_experiment"), "run_ids", f"{runs[1]},") == [f"{runs[1]}, {runs[0]}"]
        # the completions name resources that exist
        name = (await values(c, template(".png"), "name", "", run_id=runs[1]))[0]
        blob = await c.read_resource(f"artifact://{runs[1]}/{name}.png")
        assert blob.contents[0].mime_type == "image/png"


async def test_templates_without_an_extension_complete_nothing_and_folders_complete(store_dir):
    """`artifact://{run_id}/{name}` (no extension: not a template of ours) gave empty-string names (issue 26 item
    11); the folder templates complete the folder, then the files in it."""
    bare = ResourceTemplateReference(type="ref/resource", uri="artifact://{run_id}/{name}")
    folder = ResourceTemplateReference(type="ref/resource", uri="artifact://{run_id}/{folder}/{name}.json")
    async with Client(build_server(store_dir)) as c:
        sae = (await call(c, "train_sae", {"model": "toy/planted-features", "site": "resid_pre", "layer": 1,
                                           "corpus": "random", "tokens": 2000, "context": 8, "d_sae": 32,
                                           "epochs": 1, "splice_windows": 0, "wait_seconds": 120}))["result"]
        run = sae["run_id"]
        assert await values(c, bare, "run_id", "") == []
        assert await values(c, bare, "name", "", run_id=run) == []
        assert await values(c, folder, "run_id", "") == [run]
        assert await values(c, folder, "folder", "", run_id=run) == ["sae"]
        assert await values(c, folder, "name", "", run_id=run, folder="sae") == ["cfg"]
        got = await c.read_resource(f"artifact://{run}/sae/cfg.json")
        assert got.contents[0].mime_type == "application/json"
