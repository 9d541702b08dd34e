"""Tools list_models and load_model: what the model pool can serve, and loading one now."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from .base import ToolSpec
from ..models import ModelLoadError
from .common import DEFAULT_MODEL, resolve_model
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext


class ListModelsOutput(BaseModel):
    models: list[dict[str, Any]] = Field(description="id, kind, description, whether installed (else `install`: the "
                                                     "command that installs it), cached and loaded.")
    loaded: list[dict[str, Any]]
    memory_used_mb: float
    memory_budget_mb: float | None
    device: str
    id_forms: list[str]


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
                  "hf:<local dir> (GPT-2, GPT-NeoX, GPT-J, Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3, OLMo 1-2, ...)",
                  "gguf:<local file>",
                  "<TransformerLens official name> (needs the local Hugging Face cache)"])


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


class LoadModelOutput(BaseModel):
    model: str
    source: str
    device: str
    dtype: str
    n_params: int
    memory_mb: float
    load_seconds: float
    weight_hash: str
    config: dict[str, Any] = Field(description="n_layers, d_model, n_heads, d_head, n_key_value_heads, d_mlp, d_vocab, n_ctx")


def load_model(app: AppContext, args: LoadModelInput) -> LoadModelOutput:
    pool = app.pool
    if hasattr(pool, "configure") and (args.dtype != "auto" or args.n_devices != 1
                                       or pool.settings(args.model) != {"dtype": pool.dtype, "n_devices": pool.n_devices}):
        try:
            pool.configure(args.model, dtype=args.dtype, n_devices=args.n_devices)
        except ModelLoadError as e:
            raise ToolError(f"model: {e}") from None
    lm = resolve_model(app, args.model)
    cfg = lm.model.cfg
    keys = ("n_layers", "d_model", "n_heads", "d_head", "n_key_value_heads", "d_mlp", "d_vocab", "n_ctx",
            "normalization_type", "positional_embedding_type", "attn_only")
    return LoadModelOutput(model=lm.model_id, source=lm.source, device=str(lm.device),
                           dtype=getattr(lm, "dtype", "float32"), n_params=lm.n_params,
                           memory_mb=lm.memory_bytes / 2**20, load_seconds=round(lm.load_seconds, 2),
                           weight_hash=lm.weight_hash, config={k: getattr(cfg, k, None) for k in keys})


LOAD_MODEL = ToolSpec(
    "load_model", fn=load_model, input_model=LoadModelInput, output_model=LoadModelOutput, description=(
        "Load a model into the pool now (tools load lazily anyway) and show its config: layers, heads, d_model, "
        "grouped-query KV heads; choose the precision (dtype) and a multi-GPU split. The first SmolLM2 or Gemma-3 "
        "load converts the GGUF (~1 min each); later starts read a cache (seconds)."))
