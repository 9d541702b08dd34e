"""train_das(from_locate_run=...): the DAS site a locate run's strongest cell names.

locate labels its columns by name ("SUBJ") or, aligned by token index, "2 SUBJ" / "2 (varies)"; DAS intervenes at a
named position, so a cell counts only where a named position marks its column in every prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..artifacts.records import StoreError
from .common import DEFAULT_MODEL, resolve_task
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext

LOCATE_SITES = {"resid_pre", "resid_post", "attn_out", "mlp_out", "z"}


def locate_cell(app: AppContext, run_id: str, site: str | None, task: str | None, model: str | None) -> dict:
    """The fields (site, layer, head, position, and task / model where not given) of run `run_id`'s strongest cell
    at a named position, restricted to `site` when given."""
    try:
        res = app.store.read_result(run_id)
    except StoreError as e:
        raise ToolError(f"from_locate_run: {e}. Fix: pass the run_id of a completed `locate` run (list_runs "
                        f"tool='locate').") from None
    cells = res.get("best_cells")
    if not isinstance(cells, dict) or not cells:
        raise ToolError(f"from_locate_run: run {run_id} is not a `locate` run (no best_cells).")
    if site is not None:
        if site not in cells:
            raise ToolError(f"site: locate run {run_id} has no cells for site {site!r}; it has {sorted(cells)}.")
        pool = list(cells[site])
    else:
        pool = [c for s, cs in cells.items() if s in LOCATE_SITES for c in cs]
    pool = [c for c in pool if c.get("effect") is not None]
    if not pool:
        raise ToolError(f"from_locate_run: run {run_id} has no usable cells for DAS.")
    task_name = task or res.get("task")
    names = resolve_task(app, task_name).position_names() if task_name else []
    named = [(c, named_position(str(c["position"]), names)) for c in pool]
    named = [(c, p) for c, p in named if p is not None]
    if not named:
        raise ToolError(f"from_locate_run: the best cells of run {run_id} are at columns that no named position of "
                        f"task {task_name!r} marks in every prompt ({sorted({str(c['position']) for c in pool})}); "
                        f"DAS intervenes at a named position. Fix: pass position= one of {names}, or add a named "
                        f"position to the task.")
    best, position = max(named, key=lambda cp: abs(cp[0]["effect"]))
    upd = {"site": best["site"], "layer": int(best["layer"]), "head": best.get("head"), "position": position}
    if task is None:
        upd["task"] = task_name
    if model is None:
        upd["model"] = res.get("model", DEFAULT_MODEL)
    return upd


def named_position(label: str, names: list[str]) -> str | None:
    """The task position a locate column label stands for: the name itself, or the name after the index ("2 SUBJ");
    None for a column no named position marks ("2 (varies)", "3")."""
    if label in names:
        return label
    parts = label.split(maxsplit=1)
    return parts[1] if len(parts) == 2 and parts[1] in names else None
