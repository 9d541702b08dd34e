"""Lab: the tools as plain methods give what the MCP call gives, on the same code path."""

import inspect

import pytest
from mcp import Client
from mcp_helpers import call, finish

from mcp_interp import Lab
from mcp_interp.server.app import build_server
from mcp_interp.tools import TOOLS
from mcp_interp.tools.baseline import RunBaselineOutput
from mcp_interp.tools.errors import ToolError
from mcp_interp.tools.locate import LocateOutput

TOY = "toy/tiny-random"
BASELINE = {"model": TOY, "task": "induction", "n": 8}
LOCATE = {"model": TOY, "task": "induction", "n": 8, "positions": "all", "sites": ["resid_pre", "z"]}
# differ between two executions by design: identity, wall time, the run's own URIs, timestamps
VOLATILE = {"run_id", "files", "cost", "cached", "created", "seconds", "total_seconds"}


def _stable(obj, run_ids=()):
    """`obj` without what differs between two executions of one request (ids, times), run ids in text masked."""
    if isinstance(obj, dict):
        return {k: _stable(v, run_ids) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v, run_ids) for v in obj]
    if isinstance(obj, str):
        for r in run_ids:
            obj = obj.replace(r, "<run>")
    return obj


def test_every_tool_is_a_method_with_the_input_fields():
    for spec in TOOLS:
        method = getattr(Lab, spec.name)
        params = list(inspect.signature(method).parameters)[1:]
        assert params == list(spec.input_model.model_fields if spec.input_model else []), spec.name
        assert inspect.signature(method).return_annotation is spec.output_model
        assert spec.description in method.__doc__


@pytest.mark.anyio
async def test_lab_gives_the_mcp_result_for_run_baseline_and_locate(tmp_path):
    async with Client(build_server(tmp_path / "mcp")) as c:
        via_mcp = {"run_baseline": await finish(c, await call(c, "run_baseline", {**BASELINE, "wait_seconds": 120})),
                   "locate": await finish(c, await call(c, "locate", {**LOCATE, "wait_seconds": 120}))}
    with Lab(store=tmp_path / "lab") as lab:  # another store: computed again, not read from the MCP run's cache
        base = lab.run_baseline(**BASELINE)
        loc = lab.locate(**LOCATE)
        assert type(base) is RunBaselineOutput and type(loc) is LocateOutput  # the tools' own pydantic results
        assert base.status == "complete" and loc.status == "complete"
        via_lab = {"run_baseline": base.result.model_dump(mode="json"), "locate": loc.result.model_dump(mode="json")}
        for tool in via_mcp:
            ids = (via_mcp[tool]["run_id"], via_lab[tool]["run_id"])
            assert via_lab[tool]["cached"] is False and ids[0] != ids[1]
            assert _stable(via_lab[tool], ids) == _stable(via_mcp[tool], ids), tool
        # the run is stored like any other: the same store serves it back, to Lab and to a server
        assert lab.get_run(run_id=base.result.run_id).run.tool == "run_baseline"
        again = lab.run_baseline(**BASELINE)
        assert again.result.cached is True and again.result.run_id == base.result.run_id


def test_lab_refuses_bad_arguments_like_the_server(tmp_path):
    with Lab(store=tmp_path / "s") as lab:
        with pytest.raises(ToolError, match=r"invalid arguments — n: Input should be greater than or equal to 2"):
            lab.run_baseline(model=TOY, task="induction", n=1)
        with pytest.raises(ToolError, match=r"run_id: no run 'nope'"):
            lab.get_run(run_id="nope")
        with pytest.raises(ToolError, match=r"task"):
            lab.run_baseline(model=TOY, task="no-such-task", n=8)
        with pytest.raises(ToolError, match=r"tool: unknown tool 'nope'"):
            lab.call("nope")
        with pytest.raises(ToolError, match=r"list_models takes no arguments"):
            lab.list_models(device="cpu")
        # wait_seconds given: the job handle comes back as from the server, and get_job collects it
        out = lab.run_baseline(model=TOY, task="induction", n=8, seed=3, wait_seconds=0)
        if out.status != "complete":
            done = lab.get_job(job_id=out.job.job_id, wait_seconds=120)
            assert done.status == "complete" and done.result["n"] == 8
