"""`trace` end to end on a real model, as an agent calls it: transcoders on every MLP layer (trained here by
`train_transcoders` unless a run id is given), then the whole tool call on one prompt, timed against the 50 s a
heavy tool waits before it answers "running".

    PYTHONPATH=$PWD .venv/bin/python benchmarks/trace_real_models.py --model smollm2-135m [--store DIR]
        [--transcoders RUN_ID] [--n-tokens 20000] [--epochs 4] [--repeats 2] [--prompt TEXT]

No baseline runs here (circuit-tracer cannot load these models' transcoders; `trace_vs_circuit_tracer.py` compares
the graph itself against it). Printed: the transcoders' per-layer quality and the replacement model's loss (when
trained here), then per repeat the tool call's wall time (model already loaded, `force` so nothing is cached), the
graph's own seconds, its size, the scores, the identity error and the intervention check's Pearson r. The store
defaults to a temporary directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import device_name  # noqa: E402
from mcp_interp.server.lab import Lab  # noqa: E402

PROMPT = "When Mary and John went to the store on Friday, John gave a bottle of milk to"
WAIT = 50.0  # seconds a heavy tool waits by default before answering "running"


def train(lab: Lab, model: str, n_layers: int, n_tokens: int, epochs: float) -> str:
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        if time.time() - last[0] > 30:
            last[0] = time.time()
            print(f"  {fraction:5.1%} {message}", flush=True)

    lab.progress = progress
    t0 = time.perf_counter()
    out = lab.call("train_transcoders", model=model, layers=list(range(n_layers)), corpus="shakespeare",
                   n_tokens=n_tokens, epochs=epochs).result
    lab.progress = None
    print(f"train_transcoders: {n_layers} layers, width {out.width}, k {out.k}, {n_tokens} tokens x {epochs} epochs "
          f"in {time.perf_counter() - t0:.0f} s (run {out.run_id})")
    for t in out.transcoders:
        print(f"  MLP {t.layer:2d}: explained variance {t.explained_variance:.3f}, L0 {t.l0:.1f}, dead {t.dead}")
    r = out.replacement
    if r is not None:
        print(f"  every MLP replaced: CE {r.ce_replacement:.3f} vs {r.ce_original:.3f} (zero-ablated "
              f"{r.ce_zero_ablation:.3f}), fraction of loss recovered {r.fraction_loss_recovered:.3f}, KL "
              f"{r.kl_replacement:.3f}")
    return out.run_id


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--store", default=None)
    ap.add_argument("--transcoders", default=None, help="a train_transcoders run id in --store (else trained here)")
    ap.add_argument("--n-tokens", type=int, default=20_000)
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--prompt", default=PROMPT)
    a = ap.parse_args()
    store = a.store or tempfile.mkdtemp(prefix="trace-bench-")
    lab = Lab(store)
    info = lab.call("load_model", model=a.model)
    print(f"{a.model} on {device_name(info.device)}: {info.config['n_layers']} layers, store {store}")
    run_id = a.transcoders or train(lab, a.model, info.config["n_layers"], a.n_tokens, a.epochs)
    worst = 0.0
    for i in range(a.repeats):
        t0 = time.perf_counter()
        r = lab.call("trace", model=a.model, prompt=a.prompt, transcoders=run_id, force=True).result
        dt = time.perf_counter() - t0
        worst = max(worst, dt)
        cost = r.cost or {}
        ic = r.intervention_check
        print(f"trace {i + 1}/{a.repeats}: {dt:.1f} s for the call ({cost.get('graph_seconds')} s the graph), "
              f"{len(r.tokens)} tokens, {r.n_feature_nodes} feature nodes, {r.kept_nodes} kept; replacement "
              f"{r.replacement_score:.3f}, completeness {r.completeness_score:.3f}, identity error "
              f"{r.identity_error:.1e}; intervention check r = "
              f"{'n/a' if ic is None or ic.pearson is None else f'{ic.pearson:.2f}'} (n = {0 if ic is None else ic.n})")
    print(f"top path: {r.paths[0].text if r.paths else None}")
    print(f"slowest call {worst:.1f} s: {'inside' if worst <= WAIT else 'OVER'} the {WAIT:.0f} s wait window")
    lab.close()
    return 0 if worst <= WAIT else 1


if __name__ == "__main__":
    sys.exit(main())
