"""Max |logit difference| between our HookedTransformer conversion (hf:<dir>) and transformers, per architecture
family, on tiny random models built with transformers (the README's families table).

    .venv/bin/python benchmarks/families_logits.py [--long 600]

Each family: a 2-layer model with spread random weights (tests/tiny_hf.py), saved as an HF folder, loaded through
the pool; logits compared on three short prompts, and on one random prompt of --long tokens.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_hf import IOI, spread_weights, tiny_family, tiny_hf_tokenizer  # noqa: E402

from mcp_interp.models import ModelPool  # noqa: E402

FAMILIES = ["gpt2", "gpt-neox", "gpt-j", "llama-gqa", "mistral", "qwen2", "qwen3", "gemma", "gemma2",
            "gemma2-2b-shape", "gemma3", "phi3", "olmo", "olmo2", "olmo2-gqa"]
SHORT = [IOI, "The cat sat on the mat. Mary and John", "def f(x): return x + 1"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--long", type=int, default=600, help="tokens in the long random prompt")
    args = ap.parse_args()
    tok = tiny_hf_tokenizer()
    print(f"| family | short prompts | {args.long}-token prompt |\n|---|---|---|")
    for fam in FAMILIES:
        torch.manual_seed(0)
        hf = tiny_family(fam, len(tok))
        spread_weights(hf)
        hf.eval()
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            tok.save_pretrained(d)
            lm = ModelPool(device="cpu").get(f"hf:{d}")
            n_ctx = min(args.long, getattr(hf.config, "max_position_embeddings", None)
                        or getattr(hf.config, "n_positions", 64))
            prompts = [torch.tensor([tok.encode(t)]) for t in SHORT]
            long_ids = torch.randint(0, len(tok), (1, n_ctx), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                short = max((lm.model(i) - hf(i).logits).abs().max().item() for i in prompts)
                long = (lm.model(long_ids) - hf(long_ids).logits).abs().max().item()
        print(f"| {fam} | {short:.1e} | {long:.1e} ({n_ctx} tokens) |", flush=True)


if __name__ == "__main__":
    main()
