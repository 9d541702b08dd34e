"""Model layer: the pool, loaders (bundled SmolLM2, TL names, hf:<dir>, gguf:<file>, toy/<name>)
and tokenizer adapters. Imports nothing else from mcp_interp; the toys themselves live in
`mcp_interp.toymodels`, which registers them here.

Models are TransformerLens HookedTransformers loaded *without* weight processing (no layer-norm
folding or centering), so every hook carries the original model's activations.

The modules that import torch or TransformerLens load on the first use of one of their names (`lazy_exports`):
the server imports `ModelLoadError` and `hub` from here before its handshake.
"""

from .. import lazy_exports
from .errors import ModelLoadError
from .tokenizers import CharTokenizer, HFTokenizerAdapter

__getattr__, __dir__ = lazy_exports(__name__, {
    ".loaders": ("default_cache_dir",),
    ".gemma3": ("MODEL_ID as GEMMA3_ID", "gemma3_gguf_path"),
    ".pool": ("DTYPES", "LoadedModel", "ModelPool", "normalize_model_id"),
    ".smollm2": ("MODEL_ID as SMOLLM2_ID", "smollm2_gguf_path"),
    ".toy": ("ToyEntry", "add_toy_provider", "get_toy", "register_toy", "toy_models", "unregister_toy"),
})

__all__ = [
    "CharTokenizer", "DTYPES", "GEMMA3_ID", "HFTokenizerAdapter", "LoadedModel", "ModelLoadError", "ModelPool",
    "SMOLLM2_ID", "ToyEntry", "add_toy_provider", "default_cache_dir", "gemma3_gguf_path", "get_toy",
    "normalize_model_id", "register_toy", "smollm2_gguf_path", "toy_models", "unregister_toy",
]
