"""Patching engine vs TransformerLens' own patching loop on SmolLM2-135M IOI.

    python benchmarks/locate_vs_transformerlens.py [--n 16] [--skip-naive] [--threads N] [--device auto|cpu|cuda]
                                                   [--counterfactual s2_swap|resample_names] [--quick]
                                                   [--json OUT] [--markdown] [--repeats 2]

--counterfactual s2_swap (default): the corrupt prompt differs only at S2 ("..., Mary gave a drink to"),
so every cell before S2 is provably zero. resample_names: both names replaced by fresh ones, so prompts
differ from token 1 on — the hard case, where almost nothing can be skipped.

Sweeps (same inputs, same process):
  (a) residual stream (resid_pre) at every layer x every token position,
  (b) every attention head's output (hook_z) at every layer, final position only.
Baseline: transformer_lens.patching.get_act_patch_resid_pre and get_act_patch_attn_head_out_by_pos
(restricted with index_df to the final position), one batched forward per cell. Each side runs `--repeats` times,
alternating which goes first (benchmarks/_timing.py), each call timed whole (the engine's clean and counterfactual
runs, TL's clean cache and metric forwards included). Reports median wall time, the median speed-up with its
min-max spread, FLOPs really run, achieved GFLOP/s (at the median time), and the max |difference| of the
normalised effects (m_patched - m_cf) / (m_clean - m_cf), averaged over examples as TL does.

--device auto (default) runs on CUDA when torch sees it. --quick leaves out the diagnostic rerun of the engine
with TransformerLens' own blocks (the two comparisons with TL's loop stay). --markdown prints the README table
naming the device and torch version; --json writes the same numbers. Nothing here reaches the network.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._timing import Timings, add_repeats, alternate, max_abs_diff  # noqa: E402
from benchmarks._timing import report as timing_report
from benchmarks.machine import device_name, matmul_peak, sync  # noqa: E402
from mcp_interp.methods.core import LogitDiffMetric, Site  # noqa: E402
from mcp_interp.methods.patching import forward_flops, patch_sweep  # noqa: E402

NAMES = ["Mary", "John", "Tom", "James", "Anna", "Paul", "Sarah", "David", "Emma", "Mike", "Lisa",
         "Mark", "Kate", "Peter", "Alice", "Bob", "Jack", "Laura", "Sam", "Ben", "Ryan", "Chris",
         "Dan", "Eric", "Adam", "Amy", "Jane", "Steve", "Kevin", "Rose"]
# All 14 tokens long in SmolLM2's tokenizer, so S2 sits at the same index (9) in every prompt.
TEMPLATES = [
    ("When {A} and {B} went to the {place}, {S} gave a {obj} to", "store", "drink"),
    ("When {A} and {B} went to the {place}, {S} gave a {obj} to", "park", "ball"),
    ("After {A} and {B} went to the {place}, {S} gave a {obj} to", "school", "pen"),
    ("While {A} and {B} were at the {place}, {S} handed a {obj} to", "office", "book"),
]


def ioi_pairs(model, n: int, seed: int = 0, counterfactual: str = "s2_swap"):
    g = torch.Generator().manual_seed(seed)
    clean, corrupt, ans, cf = [], [], [], []
    while len(clean) < n:
        a, b, c2, d2 = torch.randperm(len(NAMES), generator=g)[:4].tolist()
        A, B = NAMES[a], NAMES[b]
        tpl, place, obj = TEMPLATES[len(clean) % len(TEMPLATES)]
        c = model.to_tokens(tpl.format(A=A, B=B, S=B, place=place, obj=obj))[0]
        if counterfactual == "s2_swap":  # answer flips to B
            x = model.to_tokens(tpl.format(A=A, B=B, S=A, place=place, obj=obj))[0]
            other = B
        else:  # fresh names C, D: the counterfactual answer is C
            C, D = NAMES[c2], NAMES[d2]
            x = model.to_tokens(tpl.format(A=C, B=D, S=D, place=place, obj=obj))[0]
            other = C
        ia, ib = model.to_tokens(" " + A)[0], model.to_tokens(" " + other)[0]
        assert len(ia) == len(ib) == 1 and len(c) == len(x) == 14, (A, B, tpl)
        clean.append(c), corrupt.append(x), ans.append(int(ia)), cf.append(int(ib))
    return clean, corrupt, torch.tensor(ans), torch.tensor(cf)


def load_model(device: str):
    from mcp_interp.models import ModelPool
    return ModelPool(device=device).get("smollm2-135m").model


def engine_effect(res) -> torch.Tensor:
    """Example-mean normalised effect per cell (logit diff is linear, so mean-then-normalise)."""
    mc, mx = res.clean.mean(), res.corrupt.mean()
    return (res.patched.mean(0) - mx) / (mc - mx)


def run_tl(model, clean_t, corrupt_t, ans, cf, which: str) -> torch.Tensor:
    """TransformerLens' patching loop: the example-mean normalised effect per cell."""
    import pandas as pd
    from transformer_lens import patching

    dev = clean_t.device
    rows, ans, cf = torch.arange(len(ans), device=dev), ans.to(dev), cf.to(dev)

    def metric(logits):
        return (logits[rows, -1, ans] - logits[rows, -1, cf]).mean()

    with torch.inference_mode():
        m_clean = metric(model(clean_t)).item()
        m_cf = metric(model(corrupt_t)).item()
        _, clean_cache = model.run_with_cache(clean_t)
        if which == "resid":
            out = patching.get_act_patch_resid_pre(model, corrupt_t, clean_cache, metric)  # [L, T]
        else:
            L, H, T = model.cfg.n_layers, model.cfg.n_heads, clean_t.shape[1]
            df = pd.DataFrame([(l, T - 1, h) for l in range(L) for h in range(H)],
                              columns=["layer", "pos", "head"])
            # get_act_patch_attn_head_out_by_pos, restricted to the final position via index_df
            out = patching.generic_activation_patch(
                model, corrupt_t, clean_cache, metric, activation_name="z", index_df=df,
                patch_setter=patching.layer_pos_head_vector_patch_setter)  # [L*H]
    return (out.flatten().cpu() - m_cf) / (m_clean - m_cf)


def sweep(title, engine, tl, repeats: int, device: str, res_tl_blocks=None) -> tuple[dict, object]:
    """Time engine() (a PatchResult) against tl() (TL's effects; None: --skip-naive), alternating; print the
    comparison and return its numbers (a row of the --markdown / --json table) and the engine's first result."""
    sides = {"engine": engine} if tl is None else {"engine": engine, "TL loop": tl}
    print(f"\n== {title}", flush=True)
    t: Timings = alternate(sides, repeats, device)
    res = t.first("engine")
    secs = t.median("engine")
    print(f"engine ({res.extra['block']} block): {len(res.cells)} cells x {res.clean.numel()} examples, "
          f"{res.flops / 1e9:.1f} GFLOP run, {res.flops / secs / 1e9:.1f} GFLOP/s at the median time, rows run "
          f"{res.n_forward_rows}, pairs skipped {res.n_skipped}/{res.n_pairs}")
    print(f"        token-layers {res.token_layers:,} vs naive {res.naive_token_layers:,} "
          f"({res.naive_token_layers / res.token_layers:.1f}x fewer); "
          f"FLOPs {res.naive_flops / res.flops:.1f}x fewer than the naive loop")
    row = {"sweep": title, "cells": len(res.cells), "engine_s": round(secs, 3), "engine_flops": res.flops,
           "engine_gflops_per_s": round(res.flops / secs / 1e9, 1), "naive_flops": res.naive_flops,
           "repeats": repeats, "engine_runs_s": [round(x, 3) for x in t.seconds("engine")]}
    if res_tl_blocks is not None:
        r = res_tl_blocks
        print(f"engine with TL's own blocks (one run): {r.seconds:.2f} s ({r.gflops_per_s:.1f} GFLOP/s), "
              f"max |diff| to lean {(r.patched - res.patched).abs().max():.1e}")
    numbers = timing_report(t, "engine", diff=lambda r, eff: max_abs_diff(engine_effect(r), eff),
                            what="normalised effect difference")
    if tl is not None:
        tl_s = t.median("TL loop")
        b = numbers["TL loop"]
        print(f"TL loop: {res.naive_flops / 1e9:.1f} GFLOP, {res.naive_flops / tl_s / 1e9:.1f} GFLOP/s at the "
              f"median time")
        row.update(tl_s=round(tl_s, 3), tl_gflops_per_s=round(res.naive_flops / tl_s / 1e9, 1),
                   speedup=round(b["ratio"], 1), speedup_min=round(b["ratio_min"], 1),
                   speedup_max=round(b["ratio_max"], 1), max_abs_diff=b["max_abs_diff"],
                   tl_runs_s=[round(x, 3) for x in t.seconds("TL loop")])
    return row, res


def markdown(rows: list[dict], meta: dict) -> str:
    out = [f"**SmolLM2-135M IOI, {meta['n']} pairs, counterfactual `{meta['counterfactual']}`, on "
           f"{meta['device_name']} ({meta['device']}, {meta['threads']} threads), torch {meta['torch']}; float32 "
           f"matmul peak {meta['peak_gflops']:.0f} GFLOP/s; median of {meta['repeats']} alternating runs per side, "
           f"speed-up min-max in brackets**", "",
           "| sweep | ours | ours GFLOP/s | TransformerLens loop | TL GFLOP/s | speed-up "
           "| max \\|Δ normalised effect\\| |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        tl = (f"{r['tl_s']:.2f} s | {r['tl_gflops_per_s']:.1f} | **{r['speedup']:.1f}×** "
              f"({r['speedup_min']:.1f}–{r['speedup_max']:.1f}) | {r['max_abs_diff']:.1e}"
              if "tl_s" in r else "— | — | — | —")
        out.append(f"| {r['sweep']} | {r['engine_s']:.2f} s | {r['engine_gflops_per_s']:.1f} | {tl} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--skip-naive", action="store_true", help="skip TransformerLens' loop")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--counterfactual", choices=["s2_swap", "resample_names"], default="s2_swap")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    ap.add_argument("--quick", action="store_true", help="leave out the engine rerun with TL's blocks")
    ap.add_argument("--json", dest="json_out", default=None, help="write the rows and machine to this JSON file")
    ap.add_argument("--markdown", action="store_true", help="print a README-ready table naming the device")
    add_repeats(ap)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    t0 = time.perf_counter()
    model = load_model(device)
    print(f"model loaded on {device} ({device_name(device)}) in {time.perf_counter() - t0:.1f} s; torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}")
    clean, corrupt, ans, cf = ioi_pairs(model, args.n, counterfactual=args.counterfactual)
    print(f"counterfactual: {args.counterfactual}")
    clean_t, corrupt_t = torch.stack(clean), torch.stack(corrupt)
    L, H, T = model.cfg.n_layers, model.cfg.n_heads, clean_t.shape[1]
    metric = LogitDiffMetric(ans, cf)

    with torch.inference_mode():
        model(clean_t)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        model(clean_t)
        sync(device)
        fwd = time.perf_counter() - t0
    fwd_flops = forward_flops(model.cfg, args.n, T, model.cfg.d_vocab)
    peak = matmul_peak(device)
    print(f"one forward of {args.n}x{T} tokens: {fwd:.3f} s, {fwd_flops / fwd / 1e9:.1f} GFLOP/s; "
          f"float32 matmul peak {peak:.1f} GFLOP/s")

    all_pos = torch.arange(T).repeat(args.n, 1)
    resid_cells = [Site("resid_pre", l, position=p) for l in range(L) for p in range(T)]
    final_pos = torch.full((args.n, 1), T - 1)
    head_cells = [Site("z", l, head=h, position=0) for l in range(L) for h in range(H)]
    res_a_tl = None if args.quick else patch_sweep(model, clean, corrupt, all_pos, resid_cells, metric, block="tl")
    res_b_tl = None if args.quick else patch_sweep(model, clean, corrupt, final_pos, head_cells, metric, block="tl")
    row_a, res_a = sweep(f"resid_pre, {L} layers × {T} positions",
                         lambda: patch_sweep(model, clean, corrupt, all_pos, resid_cells, metric),
                         None if args.skip_naive else lambda: run_tl(model, clean_t, corrupt_t, ans, cf, "resid"),
                         args.repeats, device, res_a_tl)
    print(f"clean logit diff {res_a.clean.mean():.3f}, counterfactual {res_a.corrupt.mean():.3f}")
    row_b, res_b = sweep(f"head outputs (z), {L} layers × {H} heads at END",
                         lambda: patch_sweep(model, clean, corrupt, final_pos, head_cells, metric),
                         None if args.skip_naive else lambda: run_tl(model, clean_t, corrupt_t, ans, cf, "heads"),
                         args.repeats, device, res_b_tl)
    rows = [row_a, row_b]
    top = engine_effect(res_b).topk(5)
    print("top heads by normalised effect: " + ", ".join(
        f"L{i // H}H{i % H} {v:.2f}" for v, i in zip(top.values.tolist(), top.indices.tolist())))
    meta = {"n": args.n, "counterfactual": args.counterfactual, "device": device, "device_name": device_name(device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "peak_gflops": round(peak, 1),
            "forward_s": round(fwd, 4), "repeats": args.repeats}
    if args.markdown:
        print()
        print(markdown(rows, meta))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
