"""Aligning two models' tokens on the same text, for corpus comparisons.

Same tokenizer (identical ids): token by token. Different tokenizers (Gemma's and SmolLM2's): by character
spans — a row is a character offset at which a token of A and a token of B both end, and it pairs the
activation of A at that token with B's at its token (both have read exactly the text up to that offset).
Tokens that end elsewhere (inside the other's token) have no partner and are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class CharAlignment:
    tokens_a: list[list[int]]      # per text: A's ids (its prompt prefix, e.g. BOS, first)
    tokens_b: list[list[int]]
    seq: list[int]                 # per aligned row: the text
    pos_a: list[int]               # per aligned row: the token index in tokens_a[seq]
    pos_b: list[int]
    char_end: list[int]            # per aligned row: the character offset both tokens end at
    same_tokenizer: bool

    def __len__(self) -> int:
        return len(self.seq)


def _encode(tok, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    ids, offs = tok.encode_with_offsets(text)
    prefix = list(getattr(tok, "prompt_prefix_ids", []) or [])
    return prefix + list(ids), [(0, 0)] * len(prefix) + [tuple(o) for o in offs]


def align_by_chars(texts: Sequence[str], tok_a, tok_b, skip_first: int = 1,
                   max_tokens: int | None = None) -> CharAlignment:
    """Tokenise each text with both tokenizers (each with its own prompt prefix) and pair positions (module doc).
    `skip_first`: text tokens to drop at the start of each text (the attention sink of a real model);
    `max_tokens`: truncate each side's text tokens."""
    ta, tb, seq, pa, pb, ce = [], [], [], [], [], []
    same = True
    for s, text in enumerate(texts):
        ia, oa = _encode(tok_a, text)
        ib, ob = _encode(tok_b, text)
        if max_tokens is not None:
            ia, oa = ia[:max_tokens], oa[:max_tokens]
            ib, ob = ib[:max_tokens], ob[:max_tokens]
        same = same and ia == ib
        ta.append(ia)
        tb.append(ib)
        # the last token ending at each offset (a token with an empty span, e.g. BOS, ends nowhere)
        ends_b = {e: j for j, (st, e) in enumerate(ob) if e > st}
        seen = 0
        for i, (st, e) in enumerate(oa):
            if e <= st:  # prompt prefix (BOS) and empty tokens end nowhere
                continue
            seen += 1
            j = ends_b.get(e)
            if seen > skip_first and j is not None:
                seq.append(s)
                pa.append(i)
                pb.append(j)
                ce.append(e)
    return CharAlignment(ta, tb, seq, pa, pb, ce, same)


__all__ = ["CharAlignment", "align_by_chars"]
