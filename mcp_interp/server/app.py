"""The MCP surface: the MCPServer app, its lifespan, and the registration of tools, prompts, resources."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

from .. import __version__
from ..prompts import templates
from ..runtime.context import AppContext
from ..tools import TOOLS
from ..tools.runs import read_artifact
from . import warm_up
from .completions import register_completions
from .registration import register_tool

INSTRUCTIONS = f"""mcp-interp {__version__}: mechanistic interpretability on real language models.

Workflow (each step's result says what to do next):
1. list_tasks / get_task, or define_task: a causal task (variables, mechanisms, templates, counterfactual
   generators, named positions, metric). Specs are validated against the tokenizer before any weights load.
2. run_baseline(model, task): does the model solve it? Only intervene on behaviour the model has.
   Check that each counterfactual generator changes the label and the model follows it.
3. locate(model, task, sites, positions): activation patching over layers x positions x sites; read `flow`,
   `best_cells` and the heatmaps.
4. attribute(model, task, method, level): rank heads / MLPs / neurons / positions / edges; read the faithfulness
   curve (CPR, CMD) and `circuit`. Cheap methods (atp, eap_ig) can be fooled: compare_exact=true checks them.
5. train_das(model, task, variable, site, layer | from_locate_run, k): is the variable a (low-dim) subspace there?
   Read held-out test_iia vs the random_rotation / full_vector controls; k=[1,2,4,...] gives the rank curve's knee.
   eval_das(run_id) re-tests a saved rotation on new data or another counterfactual.
6. scrub_hypothesis(model, task, hypothesis): causal scrubbing of a circuit hypothesis (nodes, parents, what
   each represents); read loss_recovered (1 = fully explained) vs the zero/mean ablations and per-node contributions.
7. report(run_ids | task, model): the study as one markdown + self-contained HTML report, every number beside the
   id of its run, with a provenance table; stored as a run (artifact://<run_id>/report.html).
Heavy tools run as jobs: they wait up to wait_seconds (default 50) sending progress, then return
{{status: "running", job: {{job_id}}}}; collect with get_job(job_id, wait_seconds). Identical requests return
the stored run (force=true recomputes). sweep(tool, base, grid) runs one heavy tool over layers / models / tasks
(each point a normal job; fanned out over Ray workers under serve --ray) and returns one table and figure.
Every result is stored: list_runs / get_run, and files are MCP
resources artifact://<run_id>/<file> (plots are PNG); a heavy result shows its main figure as an image
(include_plot=false leaves it out) and its summary ends with a Next: step. Cite run ids in reports.
Models: smollm2-135m is bundled (offline); list_models shows the rest.
Prompts plan_experiment, run_experiment, interpret_experiment walk through plan -> run -> interpret."""


class InterpServer(MCPServer):
    """MCPServer whose prompts refuse an unknown name or missing arguments with an error that says which
    (the SDK answers those with a bare internal error)."""

    async def get_prompt(self, name, arguments=None, context=None):
        prompts = {p.name: p for p in await self.list_prompts()}
        shown = name if len(name) <= 60 else name[:60] + "..."
        if name not in prompts:
            raise MCPError(code=INVALID_PARAMS, message=f"name: unknown prompt {shown!r}. Fix: use one of "
                           f"{', '.join(sorted(prompts))} (prompts/list shows their arguments).")
        args = arguments or {}
        declared = prompts[name].arguments or []
        missing = [a.name for a in declared if a.required and a.name not in args]
        unknown = sorted(set(args) - {a.name for a in declared})
        if missing or unknown:
            problems = []
            if missing:
                problems.append(f"missing required argument(s) {missing}")
            if unknown:
                problems.append(f"unknown argument(s) {[u[:40] for u in unknown[:5]]}")
            raise MCPError(code=INVALID_PARAMS, message=f"arguments: prompt {name!r}: {'; '.join(problems)}. Fix: "
                           f"pass {[a.name for a in declared]} (required: {[a.name for a in declared if a.required]}).")
        too_long = [k for k, v in args.items() if len(str(v)) > 20_000]
        if too_long:
            raise MCPError(code=INVALID_PARAMS, message=f"arguments: {too_long} longer than 20000 characters.")
        return await super().get_prompt(name, arguments, context)


def build_server(store: str | Path | None = None, memory_budget_mb: float | None = None,
                 device: str | None = None, model_roots: list[str | Path] | None = None,
                 make_app: Callable[[], AppContext] | None = None, remote: bool = False,
                 ray: str | None = None) -> MCPServer:
    """The server. `model_roots`: directories every local path a client names (hf:/gguf: ids, SAE directories,
    corpus files) must lie under (None: anywhere; the CLI confines them when serving over HTTP). `remote`: clients
    are on other machines (HTTP), so answers name no absolute server path (AppContext.redact). `make_app` replaces
    the other arguments with a ready AppContext factory (benchmarks/tool_latency.py: a fresh store and caches around
    an already loaded model)."""
    running: list[AppContext] = []  # the app of the running server, for handlers the SDK hands no context

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[AppContext]:
        app = make_app() if make_app else AppContext.create(store, memory_budget_mb, device, model_roots=model_roots,
                                                            remote=remote, ray=ray)
        running.append(app)
        try:
            yield app
        finally:
            running.remove(app)
            await warm_up.IMPORTER.stop()
            app.close()

    server = InterpServer("mcp-interp", instructions=INSTRUCTIONS, lifespan=lifespan)
    server.middleware.append(_warm_up_after_first_answer)
    for spec in TOOLS:
        register_tool(server, spec)
    _register_prompts(server)
    _register_resources(server)
    register_completions(server, lambda: running[-1] if running else None)
    return server


async def _warm_up_after_first_answer(ctx: Any, call_next: Callable) -> Any:
    """Middleware: the heavy imports start once the first message (initialize; server/discover, or any request of a
    client without the handshake) is answered, not before (warm_up.py)."""
    result = await call_next(ctx)
    if warm_up.eager():
        warm_up.IMPORTER.start()
    return result


def _register_prompts(server: MCPServer) -> None:
    @server.prompt(name="plan_experiment", description="Plan an interpretability experiment: objective, falsifiable "
                   "hypotheses, analysis plan with gates.")
    def plan_experiment(question: str, model: str = "smollm2-135m", task: str = "ioi") -> str:
        return templates.render("plan", question=question, model=model, task=task)

    @server.prompt(name="run_experiment", description="Run a planned experiment step by step with the tools, "
                   "respecting the gates.")
    def run_experiment(question: str, model: str = "smollm2-135m", task: str = "ioi") -> str:
        return templates.render("run", question=question, model=model, task=task)

    @server.prompt(name="interpret_experiment", description="Interpret finished runs into a report whose every "
                   "claim cites an artifact.")
    def interpret_experiment(question: str, model: str = "smollm2-135m", task: str = "ioi", run_ids: str = "") -> str:
        return templates.render("interpret", question=question, model=model, task=task, run_ids=run_ids or "(all runs)")


MIME = {".json": "application/json", ".png": "image/png", ".md": "text/markdown", ".txt": "text/plain",
        ".html": "text/html",
        ".safetensors": "application/octet-stream", ".csv": "text/csv"}


def _served(app: AppContext, data: bytes, ext: str) -> str | bytes:
    """A file's content as a resource: text decoded (naming no absolute server path to a remote client)."""
    return app.redact(data.decode()) if MIME[ext].startswith(("text/", "application/json")) else data


def _register_resources(server: MCPServer) -> None:
    def reader(ext: str):
        async def read(run_id: str, name: str, ctx: Context) -> str | bytes:
            app = ctx.request_context.lifespan_context
            return _served(app, read_artifact(app, run_id, f"{name}{ext}"), ext)
        return read

    def folder_reader(ext: str):  # files one folder down (e.g. sae/cfg.json): a template variable holds no "/"
        async def read(run_id: str, folder: str, name: str, ctx: Context) -> str | bytes:
            app = ctx.request_context.lifespan_context
            return _served(app, read_artifact(app, run_id, f"{folder}/{name}{ext}"), ext)
        return read

    for ext, mime in MIME.items():
        server.resource(f"artifact://{{run_id}}/{{name}}{ext}", name=f"artifact{ext}", mime_type=mime,
                        description=f"A {ext} file of a stored run.")(reader(ext))
        server.resource(f"artifact://{{run_id}}/{{folder}}/{{name}}{ext}", name=f"artifact-in-folder{ext}",
                        mime_type=mime, description=f"A {ext} file in a folder of a stored run (e.g. sae/)."
                        )(folder_reader(ext))
