"""`Lab`: the tools as plain Python methods, for notebooks and scripts (no MCP, no event loop).

Every entry of `tools.TOOLS` becomes a method of the same name, generated here, so a new tool appears without
an edit. A call validates its keyword arguments with the tool's pydantic input model (a bad one raises the
same ToolError message an agent reads), calls the tool's function on the same `AppContext` the server uses
(same run cache, store and jobs) and returns the tool's pydantic output. A heavy tool's job is waited for:
unless `wait_seconds` is given, the call returns only once the job is complete, failed or cancelled.

    from mcp_interp import Lab
    with Lab(store="artifacts") as lab:
        base = lab.run_baseline(model="toy/tiny-random", task="induction", n=16)
        verdict = base.result.verdict
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..methods.core import Progress
from ..runtime.context import AppContext
from ..tools import TOOLS, ToolSpec
from ..tools.base import HeavyOutput
from ..tools.errors import ToolError, as_tool_error
from .registration import format_validation, tool_parameters

# The longest single wait a heavy tool's input accepts (WAIT_FIELD's bound); a longer job is re-joined.
LONGEST_WAIT = 600.0
PENDING = ("running", "queued")


class Lab:
    """One research session on a store: `lab.<tool>(**arguments)` for every MCP tool (see `lab.tools()`).

    `store`: the artifact store directory or fsspec URL (default $MCP_INTERP_STORE or ./artifacts), shared with any
    server on it. `ray`: a Ray address (see `mcp-interp serve --ray`): heavy tools then run on that cluster.
    `progress`: an optional `progress(fraction, message)` callback for heavy tools.
    """

    def __init__(self, store: str | Path | None = None, *, device: str | None = None,
                 memory_budget_mb: float | None = None, progress: Progress | None = None, ray: str | None = None):
        self.app = AppContext.create(store, memory_budget_mb, device, ray=ray)
        self.progress = progress

    @property
    def store(self) -> Path:
        """The store's local directory (for a store URL: its local index and read mirror)."""
        return self.app.store.root

    @staticmethod
    def tools() -> list[str]:
        return [spec.name for spec in TOOLS]

    def call(self, tool: str, /, **arguments: Any) -> BaseModel:
        """Call the tool named `tool` (what the generated methods do)."""
        spec = _SPECS.get(tool)
        if spec is None:
            raise ToolError(f"tool: unknown tool {tool!r}. Fix: use one of {', '.join(_SPECS)}.")
        return _call(self, spec, arguments)

    def close(self) -> None:
        self.app.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lab(store={str(self.store)!r})"


_SPECS: dict[str, ToolSpec] = {spec.name: spec for spec in TOOLS}


def _validate(spec: ToolSpec, arguments: dict[str, Any]) -> BaseModel | None:
    if spec.input_model is None:
        if arguments:
            raise ToolError(f"arguments: {spec.name} takes no arguments (got {sorted(arguments)}).")
        return None
    try:
        return spec.input_model.model_validate(arguments)
    except ValidationError as e:
        raise ToolError(format_validation(e)) from None


def _invoke(lab: Lab, spec: ToolSpec, args: BaseModel | None) -> BaseModel:
    """The tool's function, as the server calls it, minus the MCP transport (waits block this thread)."""
    call: Callable[..., BaseModel] = spec.fn
    pos = (lab.app,) if args is None else (lab.app, args)
    kw = {"progress": lab.progress} if spec.progress else {}
    try:
        return call(*pos, **kw)
    except Exception as e:
        named = as_tool_error(e)
        if named is None or named is e:
            raise
        raise named from e


def _call(lab: Lab, spec: ToolSpec, arguments: dict[str, Any]) -> BaseModel:
    args = _validate(spec, arguments)
    wait_for_completion = issubclass(spec.output_model, HeavyOutput) and "wait_seconds" not in arguments
    if wait_for_completion and args is not None and "wait_seconds" in type(args).model_fields:
        args = args.model_copy(update={"wait_seconds": LONGEST_WAIT})
    while True:
        out = _invoke(lab, spec, args)
        # Still running after the longest wait: the same request joins the same job (its key), so call again.
        if not (wait_for_completion and isinstance(out, HeavyOutput) and out.status in PENDING):
            return out


def _method(spec: ToolSpec) -> Callable[..., BaseModel]:
    def method(self: Lab, **arguments: Any) -> BaseModel:
        return _call(self, spec, arguments)

    fields = spec.input_model.model_fields if spec.input_model else {}
    # help() shows the plain types; the descriptions go to the docstring
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              *(p.replace(annotation=fields[p.name].annotation) for p in tool_parameters(spec.input_model))]
    method.__signature__ = inspect.Signature(params, return_annotation=spec.output_model)  # type: ignore[attr-defined]
    method.__name__ = method.__qualname__ = spec.name
    doc = [spec.description, "", f"Returns {spec.output_model.__name__}."]
    if issubclass(spec.output_model, HeavyOutput):
        doc.append("Waits for the job to finish unless wait_seconds is given.")
    if fields:
        doc += ["", "Arguments:"] + [f"    {n}: {f.description or ''}".rstrip() for n, f in fields.items()]
    method.__doc__ = "\n".join(doc)
    return method


for _spec in TOOLS:
    if hasattr(Lab, _spec.name):  # a tool named like a Lab attribute would silently shadow it
        raise RuntimeError(f"tool {_spec.name!r} collides with Lab.{_spec.name}")
    setattr(Lab, _spec.name, _method(_spec))
