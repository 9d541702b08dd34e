"""Replay a fixed set of requests through a real MCP client and write what came back, minus what may differ between
two identical runs (run ids, paths, timings, costs), so a refactor can be checked for identical results:

    python benchmarks/replay.py before.json      # at the old commit
    python benchmarks/replay.py after.json       # at the new one
    python benchmarks/replay.py --compare before.json after.json

One small call per heavy tool on the bundled toy models (the images test's calls), in dependency order."""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

VOLATILE = {"run_id", "files", "cost", "html_path", "sae_path", "job", "seconds", "throughput", "timings", "store",
            "created", "elapsed", "wall_seconds"}
RUN_ID = re.compile(r"\b\d{8}-\d{6}-[0-9a-f]{6}\b")
RATE = re.compile(r"[\d.]+ (samples|tokens)/s")  # measured speeds quoted in summaries
FEATURES = "toy/planted-features"
CALLS = [
    ("run_baseline", {"model": "toy/tiny-random", "task": "induction", "n": 8}),
    ("locate", {"model": "toy/tiny-random", "task": "induction", "n": 8}),
    ("attribute", {"model": "toy/planted-clean", "task": "planted", "method": "atp", "level": "heads", "n": 8}),
    ("attribute", {"model": "toy/planted-clean", "task": "planted", "method": "exact", "level": "heads", "n": 8}),
    ("scrub_hypothesis", {"model": "toy/planted-clean", "task": "planted", "hypothesis": "everything", "n": 16,
                          "seeds": 1, "contributions": False, "ablations": []}),
    ("train_das", {"model": "toy/planted-direction", "task": "planted-direction", "variable": "g", "layer": 1,
                   "k": 1, "n_train": 32, "n_test": 16, "epochs": 2}),
    ("eval_das", {"run_id": "{train_das}", "n": 16}),
    ("train_sae", {"model": FEATURES, "site": "resid_pre", "layer": 1, "corpus": "random", "tokens": 2000,
                   "context": 8, "architecture": "topk", "d_sae": 32, "k": 4, "epochs": 2, "splice_windows": 4}),
    ("find_features", {"model": FEATURES, "task": "planted-features", "variable": "g", "sae": "{train_sae}", "n": 32,
                       "n_perm": 20, "test_top": 2, "interventions": ["zero", "patch"]}),
    ("find_features", {"model": FEATURES, "task": "planted-features", "variable": "g", "source": "neurons",
                       "layer": 1, "n": 32, "n_perm": 20, "test_top": 1, "interventions": ["steer"],
                       "steer_alpha": 2.0}),
    ("compare_features", {"a": {"model": FEATURES, "source": "neurons", "layer": 1},
                          "b": {"model": "toy/planted-features-s1", "source": "neurons", "layer": 1},
                          "task": "planted-features", "variable": "g", "n": 64, "n_null": 5, "n_perm": 19,
                          "test_top": 1}),
]


def scrub(x):
    """x without the keys that differ between identical runs; run ids in text replaced by a placeholder."""
    if isinstance(x, dict):
        return {k: scrub(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [scrub(v) for v in x]
    if isinstance(x, str):
        return RATE.sub("<rate>", RUN_ID.sub("<run>", x))
    return x


async def replay() -> list[dict]:
    from mcp import Client

    from mcp_interp.server.app import build_server

    out, ids = [], {}
    async with Client(build_server(tempfile.mkdtemp())) as c:
        for name, args in CALLS:
            args = json.loads(json.dumps(args).replace("{train_das}", ids.get("train_das", ""))
                              .replace("{train_sae}", ids.get("train_sae", "")))
            res = await c.call_tool(name, {**args, "wait_seconds": 600})
            body = {"error": res.content[0].text} if res.is_error else res.structured_content
            if not res.is_error and body.get("result"):
                ids[name] = body["result"]["run_id"]
            out.append({"tool": name, "args": args, "answer": scrub(body)})
            print(name, "error" if res.is_error else body.get("status"), file=sys.stderr)
    return out


def compare(a: list[dict], b: list[dict]) -> int:
    bad = 0
    for x, y in zip(a, b):
        if x["answer"] != y["answer"]:
            bad += 1
            print(f"DIFFERENT: {x['tool']} {json.dumps(x['args'])[:80]}")
            _diff(x["answer"], y["answer"], x["tool"])
    print(f"{len(a) - bad} of {len(a)} answers identical")
    return bad


def _diff(x, y, path: str) -> None:
    if isinstance(x, dict) and isinstance(y, dict):
        for k in sorted(set(x) | set(y)):
            _diff(x.get(k, "<absent>"), y.get(k, "<absent>"), f"{path}.{k}")
    elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y)):
            _diff(u, v, f"{path}[{i}]")
    elif x != y:
        print(f"  {path}: {str(x)[:100]!r} -> {str(y)[:100]!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", help="write the replayed answers here")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    a = p.parse_args()
    if a.compare:
        sys.exit(1 if compare(*(json.loads(Path(f).read_text()) for f in a.compare)) else 0)
    import anyio

    Path(a.out).write_text(json.dumps(anyio.run(replay), indent=1))


if __name__ == "__main__":
    main()
