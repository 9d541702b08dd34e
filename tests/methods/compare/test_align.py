"""Corpus alignment: token by token for one tokenizer, by shared character ends across tokenizers."""

from mcp_interp.methods.compare import align_by_chars
from mcp_interp.models.tokenizers import CharTokenizer


class _Words:
    """A toy tokenizer with one token per word (the space goes with the following word), BOS prefix."""

    prompt_prefix_ids = [0]

    def encode_with_offsets(self, text):
        ids, offs, start = [], [], 0
        for i, w in enumerate(text.split(" ")):
            s = start if i == 0 else start - 1
            offs.append((s, start + len(w)))
            ids.append(1 + len(w))
            start += len(w) + 1
        return ids, offs


def test_same_tokenizer_aligns_token_by_token():
    tok = CharTokenizer("abc ")
    al = align_by_chars(["ab ca", "cab"], tok, tok, skip_first=0)
    assert al.same_tokenizer and al.pos_a == al.pos_b and len(al) == 8


def test_different_tokenizers_align_at_shared_ends():
    al = align_by_chars(["ab ca b"], CharTokenizer("abc "), _Words(), skip_first=0)
    assert not al.same_tokenizer
    # words end at chars 2, 5, 7; the char tokenizer's tokens 1, 4, 6 end there; the word tokenizer's 1, 2, 3
    assert al.char_end == [2, 5, 7] and al.pos_a == [1, 4, 6] and al.pos_b == [1, 2, 3]
