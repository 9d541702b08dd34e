"""Where heads attend: each head's attention from one named position to the task's named positions, over prompts."""

from .patterns import AttentionReport, attention_footprint, head_attention

__all__ = ["AttentionReport", "attention_footprint", "head_attention"]
