"""Tiny random models of the architecture families the lean block covers, shared by the engine tests."""

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig


def tiny_model(kind: str, L: int = 3, H: int = 4, V: int = 50) -> HookedTransformer:
    """A random L-layer model of one architecture family, weights scaled up so single patches move the metric by
    O(1): ln (GPT-2 style), gqa (SmolLM2 style), gemma (QK norm, norms after, soft caps), gemma3 (the same without
    soft caps), olmo2 (norms after only),
    parallel (GPT-J style)."""
    common = dict(n_layers=L, d_model=32, n_heads=H, d_head=8, d_mlp=64, d_vocab=V, n_ctx=32, seed=0)
    if kind == "ln":  # GPT-2 style: LayerNorm, learned absolute positions, GELU MLP
        cfg = HookedTransformerConfig(act_fn="gelu", normalization_type="LN", **common)
    elif kind == "gqa":  # SmolLM2 style: RMSNorm, rotary, gated SiLU MLP, grouped-query attention (4 q / 2 kv)
        cfg = HookedTransformerConfig(act_fn="silu", normalization_type="RMS", final_rms=True,
                                      positional_embedding_type="rotary", rotary_dim=8,
                                      gated_mlp=True, n_key_value_heads=2, **common)
    elif kind == "gemma":  # QK norm, norms before and after, attention and output soft caps
        cfg = HookedTransformerConfig(act_fn="gelu_pytorch_tanh", normalization_type="RMS", final_rms=True,
                                      positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
                                      n_key_value_heads=2, use_qk_norm=True,
                                      use_normalization_before_and_after=True, attn_scores_soft_cap=5.0,
                                      output_logits_soft_cap=3.0, **common)
    elif kind == "gemma3":  # Gemma 3 style: QK norm, norms before and after each sublayer, no soft caps
        cfg = HookedTransformerConfig(act_fn="gelu_pytorch_tanh", normalization_type="RMS", final_rms=True,
                                      positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True,
                                      n_key_value_heads=2, use_qk_norm=True, use_normalization_before_and_after=True,
                                      **common)
    elif kind == "shortformer":  # the induction toys' positions: added to queries and keys, not the stream
        cfg = HookedTransformerConfig(act_fn="gelu", normalization_type="LN", positional_embedding_type="shortformer",
                                      **common)
    elif kind == "olmo2":  # OLMo 2: no norm before a sublayer, one after; q/k norms over whole projections
        cfg = HookedTransformerConfig(act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                                      rotary_dim=8, gated_mlp=True, original_architecture="Olmo2ForCausalLM", **common)
    else:  # GPT-J style: attention and MLP in parallel, partial rotary
        cfg = HookedTransformerConfig(act_fn="gelu", normalization_type="LN", parallel_attn_mlp=True,
                                      positional_embedding_type="rotary", rotary_dim=4, **common)
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():  # larger weights: patches then move the metric by O(1)
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(3)
    return model
