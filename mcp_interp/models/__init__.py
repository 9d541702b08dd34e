"""Model layer: the pool, loaders (bundled SmolLM2, TL names, hf:<dir>, gguf:<file>, toy/<name>)
and tokenizer adapters. Imports nothing else from mcp_interp.

Models are TransformerLens HookedTransformers loaded *without* weight processing (no layer-norm
folding or centering), so every hook carries the original model's activations.
"""

from .errors import ModelLoadError
from .pool import LoadedModel, ModelPool
from .smollm2 import MODEL_ID as SMOLLM2_ID, smollm2_gguf_path
from .tokenizers import CharTokenizer, HFTokenizerAdapter
from .toy import TOY_ALPHABET, ToyEntry, get_toy, register_toy, toy_models, unregister_toy
from .loaders import default_cache_dir

__all__ = [
    "CharTokenizer", "HFTokenizerAdapter", "LoadedModel", "ModelLoadError", "ModelPool",
    "SMOLLM2_ID", "TOY_ALPHABET", "ToyEntry", "default_cache_dir", "get_toy", "register_toy",
    "smollm2_gguf_path", "toy_models", "unregister_toy",
]
