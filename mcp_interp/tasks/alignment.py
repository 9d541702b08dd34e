"""Token columns shared by every prompt of a dataset: what `positions: "all"` patches and how it is labelled.

Prompts of one length are aligned by index (column t = token t of every prompt). A column is labelled
by the named position that sits at t in every prompt, else by its token when every prompt has the same
token there, else "(varies)": never by the first prompt's token alone. When a named position moves
between prompts (its index differs), columns mix roles; that is reported as a warning.

Prompts of different lengths are aligned by anchors: the named positions whose order is the same in
every prompt, and END (the last token). Each anchor is one column. The tokens between two consecutive
anchors (and before the first) form a segment: when it has the same length in every prompt its columns
are labelled from the earlier anchor ("S1+1"); otherwise the tokens right before the later anchor that
every prompt has are kept, right-aligned to it ("END-2"), and the longer prompts' extra tokens get no
column. Without named positions that is plain right alignment to END. `Alignment.statement` says which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class Alignment:
    """labels [P] column names; index [n][P] token index of each column in each prompt; statement: how columns
    map to tokens (for the result); warnings: what the labels cannot say; uncovered: per prompt, tokens without
    a column."""

    labels: list[str]
    index: list[list[int]]
    statement: str
    warnings: list[str] = field(default_factory=list)
    uncovered: list[int] = field(default_factory=list)


def _token_label(tokens: Sequence[Sequence[int]], cols: Sequence[int], decode: Callable[[int], str]) -> str | None:
    """repr of the token every prompt has at its column (cols[e] in prompt e), or None when they differ."""
    ids = {tokens[e][c] for e, c in enumerate(cols)}
    return repr(decode(ids.pop())) if len(ids) == 1 else None


def align_columns(tokens: Sequence[Sequence[int]], named: Mapping[str, Sequence[int]],
                  decode: Callable[[int], str]) -> Alignment:
    """Columns for every token position the prompts share (see the module docstring).

    tokens: n prompts' token ids; named: position name -> [n] token index in each prompt (-1 = not found;
    END included or not); decode: token id -> text. Returns an `Alignment`."""
    n = len(tokens)
    lengths = [len(t) for t in tokens]
    named = {k: list(v) for k, v in named.items() if all(0 <= i < lengths[e] for e, i in enumerate(v))}
    named["END"] = [length - 1 for length in lengths]
    if len(set(lengths)) == 1:
        return _by_index(tokens, named, decode)
    # Anchors: named positions in a consistent, strictly increasing order in every prompt; END last.
    order = sorted((k for k in named if k != "END"), key=lambda k: (named[k][0], k))
    anchors: list[str] = []
    for k in order:
        if all(named[k][e] < named["END"][e] and (not anchors or named[k][e] > named[anchors[-1]][e])
               for e in range(n)):
            anchors.append(k)
    anchors.append("END")
    labels: list[str] = []
    index: list[list[int]] = [[] for _ in range(n)]
    prev: str | None = None
    for a in anchors:
        start = [named[prev][e] + 1 if prev else 0 for e in range(n)]
        gaps = [named[a][e] - start[e] for e in range(n)]
        g = min(gaps)
        for k in range(g, 0, -1) if len(set(gaps)) > 1 or prev is None else range(1, g + 1):
            if len(set(gaps)) > 1 or prev is None:
                cols, name = [named[a][e] - k for e in range(n)], f"{a}-{k}"
            else:
                cols, name = [named[prev][e] + k for e in range(n)], f"{prev}+{k}"
            tok = _token_label(tokens, cols, decode)
            labels.append(f"{name} {tok}" if tok else name)
            for e in range(n):
                index[e].append(cols[e])
        labels.append(a)
        for e in range(n):
            index[e].append(named[a][e])
        prev = a
    uncovered = [lengths[e] - len(index[e]) for e in range(n)]
    lo, hi = min(lengths), max(lengths)
    if anchors == ["END"]:
        statement = (f"prompts have {lo}-{hi} tokens; 'all' is right-aligned to END: column END-k is the k-th token "
                     f"before the last in every prompt, so the first {hi - lo} tokens of the longest prompt have no "
                     f"column")
    else:
        statement = (f"prompts have {lo}-{hi} tokens; 'all' is aligned by the named positions "
                     f"{', '.join(anchors)} (one column each); a segment between anchors whose length is the same in "
                     f"every prompt is labelled from the earlier anchor (X+k), one whose length varies "
                     "is right-aligned "
                     f"to the later anchor (X-k) and keeps only the tokens every prompt has")
    warnings = []
    if max(uncovered):
        warnings.append(f"positions 'all': prompts of different lengths; up to {max(uncovered)} tokens of the longer "
                        f"prompts have no column ({statement.split('; ', 1)[1]})")
    skipped = [k for k in order if k not in anchors]
    if skipped:
        warnings.append(f"positions 'all': named positions {skipped} change order between prompts and are not "
                        f"anchors; use positions='named' to follow them")
    return Alignment(labels, index, statement, warnings, uncovered)


def _by_index(tokens, named, decode) -> Alignment:
    n, T = len(tokens), len(tokens[0])
    labels, moving = [], {}
    for t in range(T):
        here = [k for k in named if all(named[k][e] == t for e in range(n))]
        if here:
            labels.append(f"{t} {here[0]}")
            continue
        tok = _token_label(tokens, [t] * n, decode)
        labels.append(f"{t} {tok}" if tok else f"{t} (varies)")
    for k, idx in named.items():
        if len(set(idx)) > 1:
            counts = {i: idx.count(i) for i in sorted(set(idx))}
            moving[k] = ", ".join(f"{i} in {c}/{n}" for i, c in counts.items())
    warnings = []
    if moving:
        warnings.append("positions 'all': named positions move between prompts (" +
                        "; ".join(f"{k} at index {v}" for k, v in moving.items()) +
                        "), so an index column mixes roles and its label names no single token; use positions='named' "
                        "to patch each named position where it is in every prompt")
    statement = (f"prompts have {T} tokens; 'all' is aligned by index: "
                 "column t is token t of every prompt (labelled by "
                 f"a named position only where it sits at t in every prompt, '(varies)' where the token differs)")
    return Alignment(labels, [list(range(T)) for _ in range(n)], statement, warnings, [0] * n)


__all__ = ["Alignment", "align_columns"]
