"""Expose a `ToolSpec` (a plain function `fn(app, args, [progress])` and its models) as an MCP tool with flat,
typed arguments.

The pydantic input model is the single source of truth: its fields become the tool's parameters
(and so its JSON schema), its output model the tool's output schema. Blocking work runs in a worker
thread; waiting for a job (a heavy tool's `wait_seconds`, get_job's long-poll) happens on the event loop
instead (the tool returns a `Deferred`), so long-polls hold no thread and never starve other requests.
Progress is forwarded as MCP progress notifications. A tool whose input has `include_plot` (tools.base.PLOT_FIELD)
answers with its run's main figure as an image content block after the JSON text, when the run saved one.
Whatever goes wrong reaches the client as a `ToolError` that names the problem, cut to a bounded length.
"""

from __future__ import annotations

import base64
import inspect
import logging
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError, create_model

from ..methods.core import Progress
from ..tools import ToolSpec
from ..tools.base import Deferred, deferring, main_figure
from ..tools.errors import ToolError, as_tool_error
from . import warm_up

log = logging.getLogger("mcp_interp")


def tool_parameters(input_model: type[BaseModel] | None) -> list[inspect.Parameter]:
    """The input model's fields as keyword-only parameters (their types, defaults and descriptions)."""
    params = []
    for name, field in (input_model.model_fields if input_model else {}).items():
        default = inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True)
        ann = (Annotated[field.annotation, Field(description=field.description)] if field.description
               else field.annotation)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann))
    return params


MAX_ERROR_CHARS = 3000


def _bounded(message: str) -> str:
    """An error message of bounded size: a huge input is never echoed back in full."""
    if len(message) <= MAX_ERROR_CHARS:
        return message
    return message[:MAX_ERROR_CHARS - 200] + f" ... [{len(message) - MAX_ERROR_CHARS + 200} characters cut]"


def format_validation(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")  # a model validator's own "field: problem" text
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid arguments — " + "; ".join(parts)


def _with_image(out: BaseModel, png: bytes | None, redact: Callable[[Any], Any]) -> CallToolResult:
    """`out` as the SDK would send it (structured content and its JSON as text, summary included), paths redacted
    for a remote client (AppContext.redact), then the PNG if any."""
    content: list[TextContent | ImageContent] = [TextContent(type="text", text=redact(out.model_dump_json(indent=2)))]
    if png:
        content.append(ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"))
    return CallToolResult(content=content, structured_content=redact(out.model_dump(mode="json")))


def register_tool(server: MCPServer, spec: ToolSpec) -> None:
    fn, name, input_model, output_model = spec.fn, spec.name, spec.input_model, spec.output_model
    plots = input_model is not None and "include_plot" in input_model.model_fields

    async def tool(**kwargs: Any) -> Any:
        ctx: Context = kwargs.pop("ctx")
        kwargs = {k: v for k, v in kwargs.items() if v is not _MISSING}  # left out by the client
        app = ctx.request_context.lifespan_context
        call: Callable[[], Any]
        if input_model is None:
            call = partial(fn, app)
        else:
            try:
                args = input_model.model_validate(kwargs)
            except ValidationError as e:
                raise ToolError(format_validation(e)) from None
            call = partial(fn, app, args)
        if spec.progress:
            call = partial(call, progress=_progress_bridge(ctx))
        try:
            if not spec.light:  # its first call imports torch & co: only the warm-up thread may (warm_up.py)
                await warm_up.IMPORTER.ready()
            out = await anyio.to_thread.run_sync(partial(deferring, call), abandon_on_cancel=True)
            if isinstance(out, Deferred):
                job = await app.jobs.wait_async(out.job_id, out.wait,
                                                on_progress=_async_progress(ctx) if spec.progress else None)
                out = out.finish(job)
            png = plots and args.include_plot and await anyio.to_thread.run_sync(main_figure, app, out)
            if png or app.remote:  # a remote client reads no absolute server path
                return _with_image(out, png or None, app.redact)
            return out
        except Exception as e:
            if (named := as_tool_error(e)) is not None:
                raise ToolError(_bounded(app.redact(str(named)))) from None
            # never crash the server; say what happened
            log.exception("tool %s failed", name)
            raise ToolError(_bounded(app.redact(f"{name} failed unexpectedly: {type(e).__name__}: {e}"))) from e

    params = [*tool_parameters(input_model),
              inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)]
    # A CallToolResult (the answer with an image) is still validated against, and advertised as, output_model.
    returns = Annotated[CallToolResult, output_model]
    tool.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
    tool.__annotations__ = {p.name: p.annotation for p in params} | {"return": returns}
    tool.__name__ = name
    server.add_tool(tool, name=name, description=spec.description,
                    annotations=ToolAnnotations(readOnlyHint=spec.read_only, openWorldHint=False))
    registered = server._tool_manager.get_tool(name)
    if input_model is not None and registered is not None:
        # The SDK validates arguments against the signature before the tool runs and reports a failure as pydantic's
        # raw text ("1 validation error for locateArguments ... errors.pydantic.dev"). Its check is made to accept
        # anything (the published schema stays the strict one), so input_model.model_validate above names the field
        # and the problem in one line, as for every other bad input.
        registered.fn_metadata.arg_model = _accept_anything(registered.fn_metadata.arg_model)


_MISSING: Any = type("Missing", (), {"__repr__": lambda self: "<missing>"})()


def _accept_anything(arg_model: type[BaseModel]) -> type[BaseModel]:
    """The SDK's argument model with every field typed Any and defaulting to _MISSING (aliases kept)."""
    fields = {n: (Any, Field(default=_MISSING, alias=f.alias)) for n, f in arg_model.model_fields.items()}
    return create_model(arg_model.__name__, __base__=arg_model.__base__, **fields)


def _async_progress(ctx: Context):
    async def report(fraction: float, message: str) -> None:
        try:
            await ctx.report_progress(float(fraction), 1.0, message)
        except Exception:  # best-effort, as in the thread bridge
            pass
    return report


def _progress_bridge(ctx: Context) -> Progress:
    """A callback usable from the worker thread that reports MCP progress on the event loop."""
    def report(fraction: float, message: str) -> None:
        try:
            anyio.from_thread.run(ctx.report_progress, float(fraction), 1.0, message)
        except Exception:  # a client without a progress token, or a closed session: progress is best-effort
            pass
    return report
