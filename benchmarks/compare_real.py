"""compare_features on the real models, through the MCP tools as an agent would call them.

    .venv/bin/python benchmarks/compare_real.py [--stages ioi layers seeds induction] [--n 128] [--store DIR]
        [--out FILE]
        [--sae-tokens 20000] [--sae-layer 15]

Stages:
  ioi     SmolLM2-135M vs Gemma-3-270M on IOI at END: the layer x layer CKA map of resid_post (every 3rd layer of
          SmolLM2's 30, every 2nd of Gemma's 18), then MLP neurons over later layers (matched at the highest-CKA
          layer pair) with variable `order` and causal tests patching from `s2_swap` on both models.
  layers  SmolLM2 layer l vs l+k: MLP neurons at layer 12 against 14 and 20 on IOI at END, with causal tests.
  seeds   two SAE seeds on SmolLM2's resid_pre at `--sae-layer` (train_sae twice, Shakespeare), compared on IOI at END
          (and the ceiling: the same SAE against itself is trivially 1, so the ceiling is seed vs seed), with decoder
          cosines of the matches.
  induction  toy/induction-2l (seed 0) vs toy/induction-2l-s1 (trained from seed 1): an SAE (topk, 128 latents,
          k 4) on each model's layer-1 attn_out (where the induction heads write the copied letter) over the induction
          task's prompts, then the two SAEs' latents compared on the induction task at END with variable x6 (the
          letter to copy) and causal tests patching from resample_x6 on both models.
Prints each result's summary and key numbers; --out writes them as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
SMOL, GEMMA = "smollm2-135m", "gemma3-270m"


def _key(out: dict) -> dict:
    return {k: out[k] for k in ("summary", "n_rows", "layers_a", "layers_b", "cka_map", "matched_layers", "similarity",
                                "n_features", "n_pairs", "n_matched", "expected_null", "null_rate", "threshold",
                                "causal_counts", "ceiling", "run_id") if k in out} | {
        "tested": [{k: m[k] for k in ("name_a", "name_b", "r", "q", "decoder_cos", "variable_score_a",
                                      "variable_score_b", "causal_a", "causal_b", "status")}
                   for m in out["matches"] if m["status"]]}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", nargs="*", default=["ioi", "layers", "seeds", "induction"])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--store", default="/tmp/mcp-interp-compare-bench")
    ap.add_argument("--out", default=None)
    ap.add_argument("--sae-tokens", type=int, default=20_000)
    ap.add_argument("--sae-layer", type=int, default=15)
    a = ap.parse_args()
    from mcp import Client
    from mcp_helpers import call, finish

    from mcp_interp.server.app import build_server

    report: dict = {"args": vars(a)}
    common = {"task": "ioi", "position": "END", "n": a.n, "variable": "order", "counterfactual": "s2_swap",
              "intervention": "patch", "n_null": 20, "n_perm": 200, "wait_seconds": 600}

    async def run(name: str, args: dict) -> dict:
        t0 = time.time()
        out = await finish(c, await call(c, "compare_features", {**common, **args}))
        report[name] = _key(out) | {"seconds": round(time.time() - t0, 1)}
        print(f"\n== {name} ({report[name]['seconds']} s)\n{out['summary']}", flush=True)
        for m in report[name]["tested"]:
            print("  ", m["name_a"], "~", m["name_b"], "r", m["r"], "A", m["causal_a"], "B", m["causal_b"], m["status"])
        return out

    async with Client(build_server(a.store)) as c:
        if "ioi" in a.stages:
            out = await run("ioi_resid_map", {"a": {"model": SMOL, "layer": "0:30:3"},
                                              "b": {"model": GEMMA, "layer": "0:18:2"}, "test_top": 0})
            print("CKA map (rows SmolLM2 layers", out["layers_a"], "cols Gemma", out["layers_b"], ")")
            for row in out["cka_map"]:
                print("  ", " ".join(f"{x:.2f}" if x is not None else " nan" for x in row))
            await run("ioi_neurons", {"a": {"model": SMOL, "source": "neurons", "layer": "15:30:3"},
                                      "b": {"model": GEMMA, "source": "neurons", "layer": "9:18:2"}, "test_top": 8})
        if "layers" in a.stages:
            for k in (2, 8):
                await run(f"smollm2_neurons_12_vs_{12 + k}", {"a": {"model": SMOL, "source": "neurons", "layer": 12},
                                                             "b": {"model": SMOL, "source": "neurons", "layer": 12 + k},
                                                             "test_top": 5})
        if "seeds" in a.stages:
            saes = []
            for seed in (0, 1):
                t0 = time.time()
                sae = await finish(c, await call(c, "train_sae", {
                    "model": SMOL, "site": "resid_pre", "layer": a.sae_layer, "corpus": "shakespeare",
                    "tokens": a.sae_tokens, "context": 64, "skip_first": 1, "expansion": 4, "k": 32, "epochs": 8,
                    "lr": 3e-3, "batch_size": 256, "splice_windows": 8, "seed": seed, "wait_seconds": 600}))
                saes.append(sae["run_id"])
                report[f"sae_seed{seed}"] = {"run_id": sae["run_id"], "quality": {
                    k: sae["quality"][k] for k in ("explained_variance", "l0", "dead", "fraction_loss_recovered")},
                    "seconds": round(time.time() - t0, 1)}
                print("train_sae seed", seed, report[f"sae_seed{seed}"], flush=True)
            await run("smollm2_sae_seed0_vs_seed1", {"a": {"model": SMOL, "source": "sae", "sae": saes[0]},
                                                     "b": {"model": SMOL, "source": "sae", "sae": saes[1]},
                                                     "test_top": 5})
        if "induction" in a.stages:
            saes = []
            for model in ("toy/induction-2l", "toy/induction-2l-s1"):
                sae = await finish(c, await call(c, "train_sae", {
                    "model": model, "site": "attn_out", "layer": 1, "corpus": "task", "task": "induction",
                    "tokens": 20000, "d_sae": 128, "k": 4, "epochs": 20, "batch_size": 256, "lr": 3e-3,
                    "splice_windows": 32, "wait_seconds": 600}))
                saes.append(sae["run_id"])
                report[f"sae_{model}"] = {"run_id": sae["run_id"], "quality": {
                    k: sae["quality"][k] for k in ("explained_variance", "l0", "dead", "fraction_loss_recovered")}}
                print("train_sae", model, report[f"sae_{model}"], flush=True)
            await run("induction_seed0_vs_seed1", {
                "a": {"model": "toy/induction-2l", "source": "sae", "sae": saes[0]},
                "b": {"model": "toy/induction-2l-s1", "source": "sae", "sae": saes[1]}, "task": "induction",
                "variable": "x6", "counterfactual": "resample_x6", "n": 256, "test_top": 8})
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
