"""Random-weight tiny transformers for plumbing tests (`toy/tiny-random`, `toy/tiny-attn-only`)."""

from __future__ import annotations

from transformer_lens import HookedTransformer, HookedTransformerConfig

from ..models.tokenizers import CharTokenizer
from ..models.toy import register_toy
from .common import TOY_ALPHABET, seeded_model


def tiny_cfg(attn_only: bool) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=None if attn_only else 128,
        attn_only=attn_only, n_ctx=64, d_vocab=len(TOY_ALPHABET), act_fn="gelu",
        normalization_type="LN", positional_embedding_type="standard",
        default_prepend_bos=False, model_name="tiny-attn-only" if attn_only else "tiny-random",
        device="cpu",
    )


def build_tiny_random() -> tuple[HookedTransformer, CharTokenizer]:
    return seeded_model(tiny_cfg(attn_only=False), seed=0), CharTokenizer(TOY_ALPHABET)


def build_tiny_attn_only() -> tuple[HookedTransformer, CharTokenizer]:
    return seeded_model(tiny_cfg(attn_only=True), seed=1), CharTokenizer(TOY_ALPHABET)


def register() -> None:
    register_toy("tiny-random", build_tiny_random,
                 "random 2-layer transformer (d_model 32, 4 heads, MLPs), char tokenizer; for plumbing tests")
    register_toy("tiny-attn-only", build_tiny_attn_only,
                 "random 2-layer attention-only transformer (d_model 32, 4 heads), char tokenizer")
