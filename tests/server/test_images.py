"""Every heavy tool answers with its run's main figure as MCP image content beside the structured result, through
a real MCP client: one image/png block that decodes as a PNG of at most 150 KB; include_plot=false leaves it out;
a job that outlives the wait window brings it along when get_job fetches the result, and so does get_run."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp_helpers import png_of

from mcp_interp.server.app import build_server
from mcp_interp.tools import TOOLS
from mcp_interp.tools.base import HeavyInput, HeavyOutput

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_thread")]
FEATURES = "toy/planted-features"

# One small call per heavy tool, in dependency order ({name} is the run id of that earlier call).
CALLS = [
    ("run_baseline", {"model": "toy/tiny-random", "task": "induction", "n": 8}),
    ("locate", {"model": "toy/tiny-random", "task": "induction", "n": 8}),
    ("attribute", {"model": "toy/planted-clean", "task": "planted", "method": "atp", "level": "heads", "n": 8}),
    ("scrub_hypothesis", {"model": "toy/planted-clean", "task": "planted", "hypothesis": "everything", "n": 16,
                          "seeds": 1, "contributions": False, "ablations": []}),
    ("train_das", {"model": "toy/planted-direction", "task": "planted-direction", "variable": "g", "layer": 1,
                   "k": 1, "n_train": 32, "n_test": 16, "epochs": 2}),
    ("eval_das", {"run_id": "{train_das}", "n": 16}),
    ("train_sae", {"model": FEATURES, "site": "resid_pre", "layer": 1, "corpus": "random", "tokens": 2000,
                   "context": 8, "architecture": "topk", "d_sae": 32, "k": 4, "epochs": 2, "splice_windows": 4}),
    ("train_transcoders", {"model": "toy/tiny-random", "layers": [0, 1], "corpus": "random", "n_tokens": 600,
                           "context": 8, "width": 32, "k": 4, "epochs": 1, "splice_windows": 2}),
    ("load_sae", {"model": FEATURES, "path": "{sae_path}", "task": "planted-features", "n": 16}),
    ("find_features", {"model": FEATURES, "task": "planted-features", "variable": "g", "sae": "{train_sae}", "n": 32,
                       "n_perm": 20, "test_top": 1, "interventions": ["zero"]}),
    ("compare_features", {"a": {"model": FEATURES, "source": "neurons", "layer": 1},
                          "b": {"model": "toy/planted-features-s1", "source": "neurons", "layer": 1},
                          "task": "planted-features", "variable": "g", "n": 64, "n_null": 5, "n_perm": 19,
                          "test_top": 1}),
    ("probe", {"model": "toy/planted-direction", "task": "planted-direction", "variable": "g", "layers": [1],
               "n": 32}),
    ("logit_lens", {"model": "toy/planted-clean", "task": "planted", "n": 8}),
    ("attention", {"model": "toy/planted-clean", "task": "planted", "n": 8}),
    ("steer", {"model": "toy/planted-direction", "task": "planted-direction", "n": 8, "alphas": [-2.0, 0.0, 2.0],
               "max_new_tokens": 2, "n_generate": 1, "intervention": {"kind": "mean_diff", "layer": 1,
                                                                      "positive": ["a104="], "negative": ["e104="]}}),
    ("trace", {"model": "toy/planted-trace", "task": "planted-trace", "transcoders": "{planted_transcoders}",
               "check_top": 4, "contexts_corpus": "prompt"}),
    ("sweep", {"tool": "run_baseline", "base": {"model": "toy/tiny-random", "task": "induction", "n": 8},
               "grid": {"seed": [0, 1]}}),
]


def planted_transcoders(d) -> str:
    """toy/planted-trace's hand-set transcoders saved as sae-lens directories (trace reads transcoder folders)."""
    from mcp_interp.toymodels.planted_trace import planted_trace_transcoders

    for layer, tc in planted_trace_transcoders().items():
        tc.save_model(d / f"L{layer}")
    return str(d)


def test_every_heavy_tool_takes_include_plot_and_is_exercised_here():
    heavy = {s.name for s in TOOLS if issubclass(s.output_model, HeavyOutput)}
    assert heavy == {name for name, _ in CALLS}, "a new heavy tool needs a call here (and a main figure)"
    assert all(issubclass(s.input_model, HeavyInput) for s in TOOLS if s.name in heavy)  # seed, force, wait, plot
    for spec in TOOLS:
        if spec.name in heavy | {"get_job", "get_run"}:
            field = spec.input_model.model_fields["include_plot"]
            assert field.default is True and field.annotation is bool


async def test_every_heavy_tool_returns_its_main_figure(store_dir):
    ids: dict[str, str] = {"planted_transcoders": planted_transcoders(store_dir.parent / "planted-trace-tcs")}
    async with Client(build_server(store_dir)) as c:
        for name, args in CALLS:
            args = {k: v.format(**ids) if isinstance(v, str) else v for k, v in args.items()}
            res = await c.call_tool(name, {**args, "wait_seconds": 300})
            assert not res.is_error, res.content[0].text
            out = res.structured_content
            assert out["status"] == "complete" and out["result"]["summary"], out
            assert "Next: " in out["result"]["summary"], name
            assert png_of(res) is not None, f"{name} returned no image"
            # the stored full-size figures are untouched and the preview is not listed among the run's files
            assert "preview.png" not in out["result"]["files"]
            assert any(f.endswith(".png") for f in out["result"]["files"])
            ids[name] = out["result"]["run_id"]
            if name == "train_sae":
                ids["sae_path"] = out["result"]["sae_path"]

            # The identical request with include_plot=false is the same stored run (include_plot is not a
            # parameter of the computation), without the image.
            again = await c.call_tool(name, {**args, "include_plot": False})
            assert not again.is_error and png_of(again) is None
            assert [b.type for b in again.content] == ["text"]
            assert again.structured_content["result"]["run_id"] == ids[name]
            assert again.structured_content["result"]["cached"] is True


async def test_a_job_fetched_after_the_wait_brings_its_figure(store_dir):
    async with Client(build_server(store_dir)) as c:
        res = await c.call_tool("run_baseline", {"model": "toy/tiny-random", "task": "induction", "n": 12,
                                                 "wait_seconds": 0})
        out = res.structured_content
        assert out["status"] in ("queued", "running")  # a fresh request: the job is still loading the model
        assert png_of(res) is None  # nothing to show before the run exists
        job_id = out["job"]["job_id"]
        while (res := await c.call_tool("get_job", {"job_id": job_id, "wait_seconds": 60})) \
                .structured_content["status"] != "complete":
            assert res.structured_content["status"] in ("queued", "running")
        assert png_of(res) is not None
        late = await c.call_tool("get_job", {"job_id": job_id, "include_plot": False})
        assert png_of(late) is None
        assert late.structured_content["result"]["run_id"] == res.structured_content["result"]["run_id"]
        run_id = res.structured_content["result"]["run_id"]
        got = await c.call_tool("get_run", {"run_id": run_id})
        assert png_of(got) is not None
        assert png_of(await c.call_tool("get_run", {"run_id": run_id, "include_plot": False})) is None
        # tools with no run behind them answer as before: structured content and its text, no image
        tasks = await c.call_tool("list_tasks", {})
        assert [b.type for b in tasks.content] == ["text"]
