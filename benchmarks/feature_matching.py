"""Feature matching on planted pairs: ours (Hungarian on |r|, null of the whole matching, BH at 5%, causal status)
vs a fingerprint score with a fixed threshold and no null (the way interp-lab matches features).

    python benchmarks/feature_matching.py [--seeds 1000-1015] [--fdr 0.05] [--null both|shuffle|rotation]
                                          [--n-null 20] [--threshold 0.5] [--n 512] [--noise 0.25]

Pairs come from `mcp_interp.toymodels.planted_pair.build_planted_pair(seed, kind)` (20 shared features in
different bases + 8 private per side; `unrelated`: independent latents; `lookalike`: 3 read shared features act
with opposite signs in B). Per kind and method, over the seeds:
  precision  true matches / reported matches (shared, lookalike);
  recall     true matches found / shared features;
  false-match rate  false reported matches / one-to-one pairs possible (28 per pair) — on `unrelated` every
             reported match is false, so this is the rate chance gives;
  contradicted  look-alike pairs whose causal status is contradicted (ours only: the baseline has no causal test
             and reports them as matches like any other).
Prints one markdown table (the README's) and the per-seed numbers as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcp_interp.methods import compare as C  # noqa: E402
from mcp_interp.methods.core import bootstrap_ci  # noqa: E402
from mcp_interp.toymodels.planted_pair import KINDS, build_planted_pair  # noqa: E402


def _seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def ours(P, args, seed: int) -> dict:
    m = C.match_features(P.features("a"), P.features("b"), fdr=args.fdr, null=args.null, n_null=args.n_null, seed=seed)
    found = [(int(a), int(b)) for a, b, s in zip(m.rows, m.cols, m.significant) if s]
    status = {}
    for (a, b), r in zip(found, m.r[m.significant]):
        _, la, ha = bootstrap_ci(P.ablation_effect("a", a), seed=seed)
        _, lb, hb = bootstrap_ci(P.ablation_effect("b", b), seed=seed)
        status[(a, b)] = C.causal_status([la, ha], [lb, hb], float(np.sign(r)))
    return {"found": found, "status": status, "expected_null": m.expected_null, "n_pairs": len(m.r)}


def baseline(P, args, seed: int) -> dict:
    fp = C.fingerprint_baseline(P.features("a"), P.features("b"), threshold=args.threshold)
    return {"found": [(int(a), int(b)) for a, b in zip(fp["rows"], fp["cols"])], "status": {}}


def score(P, res: dict) -> dict:
    truth, found = set(P.truth), set(res["found"])
    tp = len(truth & found)
    possible = min(P.dirs_a.shape[0], P.dirs_b.shape[0])
    out = {"reported": len(found), "tp": tp, "false": len(found) - tp, "possible": possible,
           "truth": len(truth)}
    if P.lookalike:
        out["lookalike"] = len(P.lookalike)
        out["contradicted"] = sum(res["status"].get(p) == "contradicted" for p in P.lookalike)
    if "expected_null" in res:
        out["expected_null"] = res["expected_null"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1000-1015")
    ap.add_argument("--fdr", type=float, default=0.05)
    ap.add_argument("--null", default="both", choices=C.NULLS)
    ap.add_argument("--n-null", type=int, default=20)
    ap.add_argument("--threshold", type=float, default=0.5, help="the baseline's fixed fingerprint threshold")
    ap.add_argument("--n", type=int, default=512, help="examples per pair")
    ap.add_argument("--noise", type=float, default=0.25)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    seeds = _seeds(args.seeds)
    per = {(k, meth): [] for k in KINDS for meth in ("ours", "fingerprint")}
    for seed in seeds:
        for kind in KINDS:
            P = build_planted_pair(seed, kind, n=args.n, noise=args.noise)
            per[(kind, "ours")].append(score(P, ours(P, args, seed)))
            per[(kind, "fingerprint")].append(score(P, baseline(P, args, seed)))
    print(f"planted pairs, {len(seeds)} seeds ({args.seeds}); ours: FDR {args.fdr:g}, {args.null} null x "
          f"{args.n_null}; fingerprint: fixed threshold {args.threshold}\n")
    print("| method | shared: precision | shared: recall | unrelated: false-match rate | unrelated: pairs with any "
          "match | look-alike: precision | look-alike pairs contradicted |")
    print("|---|---|---|---|---|---|---|")
    for meth in ("ours", "fingerprint"):
        sh, un, lk = per[("shared", meth)], per[("unrelated", meth)], per[("lookalike", meth)]

        def prec(rows):
            rep = sum(r["reported"] for r in rows)
            return sum(r["tp"] for r in rows) / rep if rep else float("nan")

        rec = sum(r["tp"] for r in sh) / sum(r["truth"] for r in sh)
        fmr = sum(r["false"] for r in un) / sum(r["possible"] for r in un)
        anym = sum(r["reported"] > 0 for r in un)
        contra = (f"{sum(r['contradicted'] for r in lk)}/{sum(r['lookalike'] for r in lk)}" if meth == "ours"
                  else "— (no causal test)")
        print(f"| {meth} | {prec(sh):.3f} | {rec:.3f} | {fmr:.3f} | {anym}/{len(un)} | {prec(lk):.3f} | {contra} |")
    exp = np.mean([r["expected_null"] for r in per[("unrelated", "ours")]])
    print(f"\nours, unrelated pairs: mean expected null count at the cut-off {exp:.2f}; min per-seed shared recall "
          f"{min(r['tp'] / r['truth'] for r in per[('shared', 'ours')]):.3f}")
    if args.json:
        print(json.dumps({f"{k}/{m}": v for (k, m), v in per.items()}, indent=1))


if __name__ == "__main__":
    main()
