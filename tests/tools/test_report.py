"""The report tool through a real MCP client, on runs of the planted toy: which runs it cites, that every number
sits beside its run id and equals the stored result, the self-contained HTML, the stored report run, refusals;
and `mcp-interp report`."""

from __future__ import annotations

import base64
import re

import pytest
from mcp import Client
from mcp_helpers import call, call_error, finish

from mcp_interp.artifacts.report import RUN_ID
from mcp_interp.server.app import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_thread")]
MODEL, TASK = "toy/planted-clean", "planted"


async def heavy(c, tool: str, **args) -> dict:
    return await finish(c, await call(c, tool, {"model": MODEL, "task": TASK, "wait_seconds": 60, **args}))


def _findings(md: str) -> list[str]:
    """The lines of the findings that can state a result: title, table headers and provenance left out."""
    lines = md.split("\n## Provenance")[0].splitlines()
    headers = {i - 1 for i, line in enumerate(lines) if line.startswith("|---")}
    return [line for i, line in enumerate(lines) if line and not line.startswith("# ") and i not in headers]


async def test_report_by_task_and_model(store_dir, capsys):
    async with Client(build_server(store_dir)) as c:
        base = await heavy(c, "run_baseline", n=8)
        old = await heavy(c, "locate", n=4, sites=["z"], positions=["END"])
        loc = await heavy(c, "locate", n=6, sites=["resid_pre", "z"], positions="all")
        attr = await heavy(c, "attribute", n=4, level="heads")
        rep = await call(c, "report", {"task": TASK, "model": MODEL})

        md = rep["markdown"]
        cited = set(RUN_ID.findall(md))
        assert cited == {base["run_id"], loc["run_id"], attr["run_id"], rep["run_id"]}  # the newest locate only
        assert (old["run_id"] not in cited
                and [r["tool"] for r in rep["runs"]] == ["run_baseline", "locate", "attribute"])
        # every line that states a number names the run it came from
        assert all(RUN_ID.search(line) for line in _findings(md) if re.search(r"\d", line))
        # ... and the numbers are the stored results'
        ld = base["metrics"]["logit_diff"]
        assert f"| logit_diff | {ld['mean']:.3f} [{ld['ci95'][0]:.3f} .. {ld['ci95'][1]:.3f}] (n=8) | " \
               f"`{base['run_id']}` |" in md
        top = loc["best_cells"]["z"][0]
        assert f"| z | {top['layer']} | {top['head']} | {top['position']} | {top['effect']:.2f} |" in md
        assert f"top {attr['circuit']['size']} units ({', '.join(attr['circuit']['units'])})" in md

        # the HTML carries every plot inline, byte for byte the runs' files, and loads nothing from elsewhere
        page = (await c.read_resource(rep["files"]["report.html"])).contents[0]
        assert page.mime_type == "text/html"
        srcs = re.findall(r"src='([^']*)'", page.text)
        figs = [f for f in rep["files"] if f.startswith("fig-")]
        assert len(srcs) == len(figs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
        assert not re.search(r"(src|href)=['\"]?(https?:|file:|//)", page.text)
        source = f"artifact://{loc['run_id']}/resid_pre_heatmap.png"
        original = base64.b64decode((await c.read_resource(source)).contents[0].blob)
        assert base64.b64encode(original).decode() in srcs[[i for i, f in enumerate(figs)
                                                            if f.endswith(f"{loc['run_id']}-resid_pre_heatmap.png")][0]]
        # stored as a run of its own
        got = await call(c, "get_run", {"run_id": rep["run_id"]})
        assert got["run"]["tool"] == "report" and got["result"]["runs"] == [r["run_id"] for r in rep["runs"]]
        assert rep["run_id"] in {r["run_id"] for r in (await call(c, "list_runs", {"tool": "report"}))["runs"]}

        async def refused(args: dict) -> str:  # the error message after the SDK's "Error executing tool report: "
            return (await call_error(c, "report", args)).split("report: ", 1)[1]
        assert (await refused({"run_ids": [base["run_id"], "20990101-000000-abcdef"]})) \
            .startswith("run_ids: no run '20990101-000000-abcdef'")
        assert (await refused({"task": TASK})).startswith("model:")
        assert (await refused({})).startswith("run_ids:")
        assert (await refused({"task": TASK, "model": "toy/tiny-random"})).startswith("task:")

    # the same from the shell (the command's main, in this process), by run id
    from mcp_interp.server.cli import main
    assert main(["--store", str(store_dir), "report", base["run_id"], "--title", "shell"]) == 0
    run_id, md_path, html_path = capsys.readouterr().out.split()
    assert RUN_ID.fullmatch(run_id) and "# shell" in open(md_path).read() and html_path.endswith("report.html")
    assert main(["--store", str(store_dir), "report", "20990101-000000-abcdef"]) == 2
    assert "run_ids: no run" in capsys.readouterr().err
