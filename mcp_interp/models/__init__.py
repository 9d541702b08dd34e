"""Model layer: the pool, loaders (bundled SmolLM2, TL names, hf:<dir>, gguf:<file>, toy/<name>)
and tokenizer adapters. Imports nothing else from mcp_interp; the toys themselves live in
`mcp_interp.toymodels`, which registers them here.

Models are TransformerLens HookedTransformers loaded *without* weight processing (no layer-norm
folding or centering), so every hook carries the original model's activations.
"""

from .errors import ModelLoadError
from .loaders import default_cache_dir
from .gemma3 import MODEL_ID as GEMMA3_ID
from .gemma3 import gemma3_gguf_path
from .pool import DTYPES, LoadedModel, ModelPool, normalize_model_id
from .smollm2 import MODEL_ID as SMOLLM2_ID
from .smollm2 import smollm2_gguf_path
from .tokenizers import CharTokenizer, HFTokenizerAdapter
from .toy import ToyEntry, add_toy_provider, get_toy, register_toy, toy_models, unregister_toy

__all__ = [
    "CharTokenizer", "DTYPES", "GEMMA3_ID", "HFTokenizerAdapter", "LoadedModel", "ModelLoadError", "ModelPool",
    "SMOLLM2_ID", "ToyEntry", "add_toy_provider", "default_cache_dir", "gemma3_gguf_path", "get_toy",
    "normalize_model_id", "register_toy", "smollm2_gguf_path", "toy_models", "unregister_toy",
]
