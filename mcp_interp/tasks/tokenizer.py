"""The small tokenizer protocol the task layer needs.

tasks/ never imports a model library: any object with these methods works (the model pool wraps
HF tokenizers in an adapter; toy models ship a character-level tokenizer).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids, with character offsets so named positions can be resolved."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no special tokens added."""
        ...

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and, per token, the (start, end) character span of `text` it covers."""
        ...

    def decode(self, ids: list[int]) -> str: ...
