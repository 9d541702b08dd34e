"""The MCP completion request (completion/complete): values for prompt arguments and resource-template variables.

Prompt arguments `model` (model ids), `task` (task names) and `run_ids` (a comma-separated list: the last item
is completed); the `artifact://{run_id}/{name}.<ext>` templates' `run_id` (runs that have such a file) and
`name` (that run's files with the extension, given `run_id` among the already resolved arguments), and for the
`artifact://{run_id}/{folder}/{name}.<ext>` templates also `folder`; a template without an extension (not one of
ours) completes nothing. Every list
is filtered by the prefix typed so far and cut to the protocol's 100 values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.types import Completion, PromptReference, ResourceTemplateReference

from . import warm_up

if TYPE_CHECKING:
    from ..runtime.context import AppContext

MAX_VALUES = 100  # the protocol's limit per response
RUNS_SCANNED = 500  # the newest runs offered (older ones are not completed)


def model_ids(app: AppContext) -> list[str]:
    ids = [m["id"] for m in app.pool.available()] + [lm.model_id for lm in app.pool.loaded()]
    return list(dict.fromkeys(ids))


def run_ids(app: AppContext, prefix: str = "") -> list[str]:
    return [r.run_id for r in app.store.list_runs(limit=RUNS_SCANNED) if r.run_id.startswith(prefix)]


def run_files(app: AppContext, run_id: str, ext: str, folder: str | None = None) -> list[str]:
    """Files of a run with extension `ext` (top level, or in `folder`), without the extension (what `{name}` stands
    for); none for an unknown run or an empty extension."""
    if not ext:
        return []
    try:
        names = app.store.list_files(run_id)
    except (KeyError, ValueError):
        return []
    where = f"{folder}/" if folder else ""
    return [n[len(where): -len(ext)] for n in names
            if n.startswith(where) and "/" not in n[len(where):] and n.endswith(ext)]


def run_folders(app: AppContext, run_id: str, ext: str) -> list[str]:
    """The folders of a run that hold files with extension `ext` (what `{folder}` stands for)."""
    try:
        names = app.store.list_files(run_id)
    except (KeyError, ValueError):
        return []
    return sorted({n.split("/", 1)[0] for n in names if n.count("/") == 1 and n.endswith(ext)})


def _listed(value: str, choices: list[str]) -> list[str]:
    """Complete the last item of a comma-separated list, leaving out items already given."""
    head, _, last = value.rpartition(",")
    given = {v.strip() for v in head.split(",") if v.strip()}
    sep = f"{head}, " if head else ""
    return [sep + c for c in choices if c.startswith(last.strip()) and c not in given]


def candidates(app: AppContext, ref: PromptReference | ResourceTemplateReference, name: str, value: str,
               resolved: dict[str, str]) -> list[str]:
    """Every completion of argument `name` (typed so far: `value`) of a prompt or resource template."""
    if isinstance(ref, PromptReference):
        if name == "model":
            return [m for m in model_ids(app) if m.startswith(value)]
        if name == "task":
            return [t for t in app.tasks.names() if t.startswith(value)]
        if name == "run_ids":
            return _listed(value, run_ids(app))
        return []
    if not ref.uri.startswith("artifact://"):
        return []
    ext = ref.uri.rsplit("}", 1)[-1]  # artifact://{run_id}/{name}.png -> .png
    if not ext.startswith("."):
        return []  # not one of the server's templates (each ends in an extension)
    in_folder = "{folder}" in ref.uri
    run = resolved.get("run_id")
    if name == "run_id":
        return [r for r in run_ids(app, value) if (run_folders if in_folder else run_files)(app, r, ext)]
    if name == "folder" and in_folder and run:
        return [f for f in run_folders(app, run, ext) if f.startswith(value)]
    if name == "name" and run and (resolved.get("folder") or not in_folder):
        return [f for f in run_files(app, run, ext, resolved.get("folder")) if f.startswith(value)]
    return []


def register_completions(server: MCPServer, current_app: Callable[[], AppContext | None]) -> None:
    """Answer completion/complete from the app of the running server (`current_app()`; None before it starts)."""
    @server.completion()
    async def complete(ref, argument, context) -> Completion | None:
        app = current_app()
        if app is None:
            return None
        resolved = dict(context.arguments or {}) if context is not None else {}
        await warm_up.IMPORTER.ready()  # model ids and task names need the model pool and the toy models (torch)
        values = await anyio.to_thread.run_sync(candidates, app, ref, argument.name, argument.value, resolved)
        return Completion(values=values[:MAX_VALUES], total=len(values), has_more=len(values) > MAX_VALUES)
