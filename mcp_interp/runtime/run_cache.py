"""The run cache: the same tool, task, model and parameters return the stored run instead of recomputing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..artifacts import params_hash
from .task_registry import task_hash

if TYPE_CHECKING:
    from .context import AppContext


def cached_result(app: AppContext, tool: str, task: str, model: str, params: dict) -> dict | None:
    """The stored result of an identical earlier request, if one completed.

    Identical means the same parameters, the same task spec (a redefined task has a new hash) and the same
    weights: for local models (hf:, gguf:) the content hash of their files on disk, whether or not the model is
    loaded (a loaded copy whose files changed is dropped, so the job loads the new weights); for others, when
    loaded, the loaded weights' hash.
    """
    spec = app.tasks.get(task)
    loaded = {lm.model_id: lm for lm in app.pool.loaded()}
    weight_hash = app.pool.weight_identity(model)
    if weight_hash is not None and model in loaded and loaded[model].weight_hash != weight_hash:
        app.pool.unload(model)  # its files changed on disk since it was loaded
    elif weight_hash is None and model in loaded:
        weight_hash = loaded[model].weight_hash
    rec = app.store.find_cached(tool, task, model, params_hash(params),
                                task_hash=task_hash(spec) if spec else None, weight_hash=weight_hash)
    if rec is None:
        return None
    result = app.store.read_result(rec.run_id)
    result["cached"] = True
    return result
