"""Tiny Hugging Face models and tokenizers built in memory (no files, no network), shared by the model tests."""

from __future__ import annotations

import torch

IOI = "When Mary and John went to the store, John gave a drink to"


def tiny_hf_tokenizer():
    """A small byte-level BPE fast tokenizer trained in memory (no files, no network)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = [IOI, "The cat sat on the mat.", "def f(x): return x + 1", "Mary and John"] * 20
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")


def tiny_family(family: str, vocab: int):
    """A tiny random-weight HF causal LM of `family` (2 layers, d_model 32), built with transformers only."""
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64)
    if family == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4))
    if family == "gpt-neox":
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**common, rotary_pct=0.5, use_parallel_residual=True))
    if family == "gpt-j":
        return tf.GPTJForCausalLM(tf.GPTJConfig(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                                rotary_dim=4))
    if family == "llama-gqa":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common, num_key_value_heads=2, rope_theta=50000.0))
    if family == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**common, num_key_value_heads=2, head_dim=8))
    if family == "qwen2":  # q/k/v biases
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, num_key_value_heads=2))
    if family == "qwen3":  # per-head q/k RMSNorm
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, num_key_value_heads=2, head_dim=8))
    if family == "gemma":
        return tf.GemmaForCausalLM(tf.GemmaConfig(**common, num_key_value_heads=1, head_dim=8))
    if family == "gemma2":  # sliding window 4 on even layers, soft caps, query_pre_attn_scalar != head_dim
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                                    query_pre_attn_scalar=16, attn_logit_softcapping=5.0,
                                                    final_logit_softcapping=3.0))
    if family == "gemma3":  # local/global layers with their own rope bases, q/k norm
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
            **common, num_key_value_heads=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}))
    if family == "phi3":
        return tf.Phi3ForCausalLM(tf.Phi3Config(**common, num_key_value_heads=4, pad_token_id=0))
    if family == "olmo":
        return tf.OlmoForCausalLM(tf.OlmoConfig(**common, pad_token_id=0, clip_qkv=0.5))
    if family == "olmo2":
        return tf.Olmo2ForCausalLM(tf.Olmo2Config(**common, pad_token_id=0))
    if family == "olmo2-gqa":  # q/k norms over whole projections, k_norm over the 2 KV heads
        return tf.Olmo2ForCausalLM(tf.Olmo2Config(**common, num_key_value_heads=2, pad_token_id=0))
    if family == "gemma2-2b-shape":  # Gemma-2-2B's config (GQA 8/4, head_dim 256, caps 50/30, window 4096), 2 layers
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(vocab_size=vocab, hidden_size=256, intermediate_size=512,
                                                    num_hidden_layers=4))
    if family == "stablelm":
        return tf.StableLmForCausalLM(tf.StableLmConfig(**common))
    raise ValueError(family)


def spread_weights(model, seed=0):
    """Random weights with larger spread than HF's init (std 0.02 makes every logit ~0 and every patch ~0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
