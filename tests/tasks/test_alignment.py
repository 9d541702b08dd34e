"""Position columns for positions='all': index alignment with honest labels, anchor alignment across lengths."""

from mcp_interp.tasks.alignment import align_columns


def dec(t: int) -> str:
    return chr(ord("a") + t)


def test_same_length_labels_never_name_one_prompts_token_when_a_slot_moves():
    # X sits at index 0 in the first prompt and at 1 in the second: columns 0 and 1 hold different roles.
    tokens = [[0, 5, 9], [5, 0, 9]]
    al = align_columns(tokens, {"X": [0, 1]}, dec)
    assert al.index == [[0, 1, 2], [0, 1, 2]]
    assert al.labels == ["0 (varies)", "1 (varies)", "2 END"]
    assert any("X at index 0 in 1/2, 1 in 1/2" in w for w in al.warnings)
    # A slot that stays put is labelled by its name; a shared token by that token.
    al = align_columns([[0, 5, 9], [1, 5, 9]], {"X": [0, 0]}, dec)
    assert al.labels == ["0 X", "1 'f'", "2 END"] and not al.warnings


def test_different_lengths_align_by_anchors_and_say_so():
    # prompt 0: X . Y . END (5 tokens); prompt 1: X . . Y . END (6): the X..Y gap varies (1 vs 2 tokens).
    tokens = [[0, 7, 1, 8, 9], [2, 7, 7, 3, 8, 9]]
    al = align_columns(tokens, {"X": [0, 0], "Y": [2, 3]}, dec)
    assert al.labels == ["X", "Y-1 'h'", "Y", "Y+1 'i'", "END"]
    assert al.index == [[0, 1, 2, 3, 4], [0, 2, 3, 4, 5]]
    assert al.uncovered == [0, 1] and "aligned by the named positions X, Y, END" in al.statement
    assert al.warnings and "1 tokens" in al.warnings[0]


def test_without_named_positions_right_align_to_end():
    al = align_columns([[1, 2, 3], [4, 1, 2, 3]], {}, dec)
    assert al.labels == ["END-2 'b'", "END-1 'c'", "END"]
    assert al.index == [[0, 1, 2], [1, 2, 3]] and "right-aligned to END" in al.statement
