"""Tokenizers that satisfy the `tasks.tokenizer.Tokenizer` protocol.

The protocol is structural, so nothing here imports `mcp_interp.tasks` (models/ imports nothing of
ours). Both classes give token ids with no special tokens and per-token character spans, which is
what the task layer needs to resolve named positions.
"""

from __future__ import annotations

from typing import Any, Iterable


class HFTokenizerAdapter:
    """Wraps a Hugging Face *fast* tokenizer (offsets need the Rust backend).

    `hf` is the wrapped tokenizer, for code that needs HF features (chat templates, batching).
    `prompt_prefix_ids`: special tokens the model expects before every prompt ([BOS] for Gemma; empty for
    SmolLM2). `encode` never adds them (answers are encoded with it too); the task layer puts them in
    front of prompts.
    """

    def __init__(self, hf_tokenizer: Any, prompt_prefix_ids: Iterable[int] = ()):
        if not getattr(hf_tokenizer, "is_fast", False):
            raise TypeError(
                f"{type(hf_tokenizer).__name__} is not a fast tokenizer; character offsets "
                "(needed for named token positions) require a fast (Rust) tokenizer"
            )
        self.hf = hf_tokenizer
        self.prompt_prefix_ids = [int(i) for i in prompt_prefix_ids]

    @property
    def vocab_size(self) -> int:
        # len() counts added special tokens too; ids from encode() are always < len().
        return len(self.hf)

    def encode(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(s), int(e)) for s, e in enc["offset_mapping"]]

    def decode(self, ids: Iterable[int]) -> str:
        # No cleanup: keep decode(encode(x)) == x for byte-level BPE.
        return self.hf.decode(list(ids), clean_up_tokenization_spaces=False)

    def __repr__(self) -> str:
        return f"HFTokenizerAdapter({type(self.hf).__name__}, vocab_size={self.vocab_size})"


class CharTokenizer:
    """One token per character of a fixed alphabet (toy models). Token id = index in `alphabet`."""

    def __init__(self, alphabet: str):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("CharTokenizer alphabet has duplicate characters")
        if not alphabet:
            raise ValueError("CharTokenizer alphabet is empty")
        self.alphabet = alphabet
        self._index = {c: i for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._index[c] for c in text]
        except KeyError as e:
            ch = e.args[0]
            raise ValueError(
                f"character {ch!r} (position {text.index(ch)}) is not in this tokenizer's "
                f"alphabet {self.alphabet!r}"
            ) from None

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        return self.encode(text), [(i, i + 1) for i in range(len(text))]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.alphabet):
                raise ValueError(f"token id {i} out of range for vocab of {len(self.alphabet)}")
            out.append(self.alphabet[i])
        return "".join(out)

    def __repr__(self) -> str:
        return f"CharTokenizer({self.alphabet!r})"
