"""Edge-circuit faithfulness: the vectorised masked forward vs the per-receiver loop it replaced, and vs auto-circuit.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/edges.py [--model smollm2-135m] [--task ioi] [--n 16]
        [--method eap_ig] [--toy clean] [--skip-old] [--threads N] [--device cpu|cuda] [--scores-dir DIR]
    # with auto-circuit beside our TransformerLens (a throwaway venv that sees the project's packages):
    python -m venv /tmp/ac_venv && echo $PWD/.venv/lib/python3.11/site-packages > \\
        /tmp/ac_venv/lib/python3.11/site-packages/main.pth && \\
        /tmp/ac_venv/bin/pip install --no-deps auto-circuit==1.0.1 ordered-set blobfile lxml pycryptodomex
    PYTHONPATH=$PWD /tmp/ac_venv/bin/python benchmarks/edges.py ...

The circuits are those of one faithfulness curve (docs/architecture.md §6): the top-k edges by `--method` scores
at every
fraction of FRACTIONS, ranked by signed and by absolute score, plus the empty circuit (21 circuits); every edge
outside a circuit carries its counterfactual value. Three evaluators run on the same model, pairs and circuits,
in one process, alternating (benchmarks/_timing.py: `--repeats` runs each, the order reversed every repeat):

  new    `edge_circuit_metrics` (masked.py: senders' differences stacked, per-receiver masks as one batched
         matmul, several circuits per forward)
  old    the per-receiver Python loop shipped before (tests/methods/attribution/edge_loop.py, verbatim), driven
         as the old `edge_circuit_metrics` drove it (8 pairs x 4 circuits per forward)
  auto-circuit  auto-circuit 1.0.1's PatchableModel (one forward per circuit, its own PatchWrappers; the masks set
         edge by edge from ours), when importable; built once on a copy of the model (its wrappers stay out of
         ours), the graph construction not timed.

auto-circuit 1.0.1 declares transformer-lens>=1.13 but imports `HookedTransformerKeyValueCache` from the
top-level package and from `transformer_lens.past_key_value_caching`, both gone in TransformerLens 3.x; the
benchmark aliases them to `transformer_lens.cache.key_value_cache.TransformerLensKeyValueCache` (auto-circuit only
names the type, it never builds one here). Its graph has one K and one V input per query head, so under grouped-
query attention (SmolLM2: 9 query heads, 3 key-value heads) its hooks index heads the split k/v inputs do not
have; the model is then run with TransformerLens' `ungroup_grouped_query_attention` (k/v inputs repeated per query
head, numerically the same model) and our edge into group g's k/v input is auto-circuit's edges into the k/v
inputs of every query head of group g. Where auto-circuit cannot be imported the row says why and is skipped.

Printed: median seconds per evaluator, the median speed-up over each baseline with its min-max spread over the
repeats, and the max |difference| of the circuits' mean metric and of the faithfulness values. The toy is
`toy/planted-<regime>` with its planted task.

Alternating, `--skip-model --toy clean --threads 1 --repeats 6` under /tmp/ac_venv (toy/planted-clean, n=16, 21
circuits; load ~5 on the 2 cores), medians: new 0.05 s; old loop 0.17 s, speed-up 4.2x (2.5-6.2) wall, 3.9x
(3.3-4.5) CPU; auto-circuit 1.0.1 0.13 s, 3.1x (1.9-5.6) wall, 2.7x (2.5-3.0) CPU; max |metric diff| and max
|faithfulness diff| 0 for both.

Measured 2026-11-30 on the shared 2-core CPU box, before the sides alternated (one old run between two new ones,
the new side's best of two quoted; not re-measured) (load average 9-17 from other jobs: wall times are inflated and
noisy, CPU-time ratios are the steadier number):
  toy/planted-clean (re-measured above): new 0.17 s; old loop 0.53 s (3.2x); auto-circuit 0.81 s (4.8x).
  tiny GQA/rotary and standard random models (tests' configs), 6 circuits: auto-circuit agrees with ours to 1e-6.
  smollm2-135m ioi n=16, eap_ig ranking, 70651 edges, 21 circuits (first version of masked.py, one matmul per
      receiver hook): new 564.7 s wall under load; the old loop was stopped after 30 min (it could not finish before
      the deadline), and EAP-IG scores alone took 1722 s wall (use --scores-dir to reuse them).
  benchmarks/edges_forward_ratio.py 8 --repeats 2 (same process, 8 densest curve circuits x 8 IOI pairs, sides
      alternating, quiet machine): old loop 22.3 s wall / 44.3 s CPU, new 3.83 s / 7.51 s (medians) -> 5.8x
      (5.5-6.1) wall, 5.9x (5.6-6.2) CPU; max |metric diff| 3.3e-06. (One run of the old loop at load 9-17 had
      taken 896 s wall: not comparable.)
auto-circuit on SmolLM2 was not run here for lack of time on this machine (its graph, ungrouped, has 9 k/v inputs per
layer instead of 3; the code path is the one checked on the tiny GQA model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._timing import add_repeats, alternate, report, timed  # noqa: E402
from mcp_interp.methods.attribution import (  # noqa: E402
    FRACTIONS,
    circuit_counts,
    edge_circuit_metrics,
    edge_scores,
    pair_chunks,
    receivers,
    sender_hooks,
    sender_outputs,
    senders,
    split_inputs,
    top_k_masks,
)


def smollm2_case(model_id: str, task: str, n: int, device: str | None):
    from mcp_interp.models.pool import ModelPool
    from mcp_interp.tasks import builtin
    from mcp_interp.tasks.spec import TaskSpec
    from mcp_interp.tools.common import pair_dataset

    spec = TaskSpec.model_validate({"ioi": builtin.IOI}[task])
    lm = ModelPool(device=device, dtype="float32").get(model_id)
    _, metric, clean, corrupt = pair_dataset(spec, lm, model_id, n, 0, None, None, spec.metric)
    return lm.model, clean, corrupt, metric


def toy_case(regime: str, n: int):
    from mcp_interp.evaluation.ground_truth import planted_case

    model, clean, corrupt, metric, _ = planted_case(regime, 0, n=n)
    return model, clean, corrupt, metric


def old_evaluator(model, S, R, allowed, keep, clean, corrupt, metric, batch_size=8):
    """The shipped edge_circuit_metrics before the vectorised forward: 8 pairs x 4 circuits per forward."""
    from tests.methods.attribution.edge_loop import loop_masked_forward

    tot = torch.zeros(len(keep))
    full = torch.zeros(len(keep), *allowed.shape, dtype=torch.bool)
    full[:, allowed] = ~keep
    mx = mc = 0.0
    with split_inputs(model):
        for pc in pair_chunks(model, clean, corrupt, metric, sender_hooks(model, S), batch_size, names_x=[]):
            mx, mc = mx + float(pc.m_x.sum()), mc + float(pc.m_c.sum())
            other = sender_outputs(model, pc.cache_c, S)
            for a in range(0, len(keep), 4):
                tot[a:a + 4] += loop_masked_forward(model, pc.x, other, full[a:a + 4], metric, pc.idx,
                                                    S, R).sum(1).cpu()
    return tot / len(clean), mx / len(clean), mc / len(clean)


def faithfulness(m, mx, mc):
    """f per circuit, normalised by the last (empty) circuit, as faithfulness_curves does."""
    return (m - m[-1]) / (mx - m[-1])


def edge_ranking(label, model, clean, corrupt, metric, method, scores_dir):
    """(allowed [S, R], flat scores, seconds) of `method`, read from / written to scores_dir when given (EAP-IG on
    SmolLM2 takes minutes; the circuits only need its ranking)."""
    path = Path(scores_dir) / f"{label.replace('/', '_').replace(' ', '_')}-{method}-n{len(clean)}.pt" \
        if scores_dir else None
    if path is not None and path.exists():
        d = torch.load(path)
        return d["allowed"], d["flat"], d["seconds"]
    run = timed(lambda: edge_scores(model, method, clean, corrupt, metric), model.cfg.device)
    es, t = run.result, run.wall
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"allowed": es.allowed, "flat": es.flat(), "seconds": t}, path)
    return es.allowed, es.flat(), t


def bench(label, model, clean, corrupt, metric, method, skip_old, auto, scores_dir=None, repeats=2):
    S, R = senders(model), receivers(model)
    allowed, scores, t_scores = edge_ranking(label, model, clean, corrupt, metric, method, scores_dir)
    counts = circuit_counts(len(scores), FRACTIONS)
    keep = torch.cat([top_k_masks(scores, counts, r) for r in ("signed", "abs")]
                     + [torch.zeros(1, len(scores), dtype=torch.bool)])
    print(f"\n== {label}: {len(S)} senders x {len(R)} receivers, {len(scores)} edges, n={len(clean)}, "
          f"pos={len(clean[0])}, {len(keep)} circuits (sizes {counts}), device {model.cfg.device}, "
          f"{torch.get_num_threads()} threads; {method} scores took {t_scores:.1f} s", flush=True)
    args = (model, S, R, allowed, keep, clean, corrupt, metric)
    ends = {}  # m(x), m(x') as the new evaluator reports them

    def new():
        m, ends["mx"], ends["mc"] = edge_circuit_metrics(*args)
        return m

    sides = {"new (vectorised)": new}
    if not skip_old:
        sides["old per-receiver loop"] = lambda: old_evaluator(*args)[0]
    if auto is not None:
        try:
            sides["auto-circuit 1.0.1"] = auto(model, S, R, allowed, keep, clean, corrupt, metric)
        except Exception as e:  # report why auto-circuit could not run on this model, keep the other rows
            print(f"auto-circuit failed on {label}: {type(e).__name__}: {e}")
    t = alternate(sides, repeats, model.cfg.device)
    report(t, "new (vectorised)", what="metric diff")
    f_new = faithfulness(t.first("new (vectorised)"), ends["mx"], ends["mc"])
    for name in list(sides)[1:]:
        f = faithfulness(t.first(name), ends["mx"], ends["mc"])
        print(f"{name}: max |faithfulness diff| {float((f - f_new).abs().max()):.2e}")
    print("faithfulness (signed ranking):", [round(float(v), 3) for v in f_new[:len(counts)]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--method", default="eap_ig", choices=["eap", "eap_ig"])
    ap.add_argument("--toy", default="clean", help="planted regime of the toy run ('' to skip)")
    ap.add_argument("--toy-n", type=int, default=16)
    ap.add_argument("--skip-model", action="store_true", help="only the toy")
    ap.add_argument("--skip-old", action="store_true")
    ap.add_argument("--no-auto-circuit", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--scores-dir", default=None, help="keep the edge scores here and reuse them on the next run")
    add_repeats(ap)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    auto = None
    if not a.no_auto_circuit:
        try:
            from edges_auto_circuit import auto_circuit_evaluator
            auto = auto_circuit_evaluator
        except ImportError as e:
            print(f"auto-circuit not importable here ({e}); comparing with the per-receiver loop only")
    if a.toy:
        model, clean, corrupt, metric = toy_case(a.toy, a.toy_n)
        model.to(a.device or "cpu")
        bench(f"toy/planted-{a.toy}", model, clean, corrupt, metric, a.method, a.skip_old, auto, a.scores_dir,
              a.repeats)
    if not a.skip_model:
        model, clean, corrupt, metric = smollm2_case(a.model, a.task, a.n, a.device)
        bench(f"{a.model} {a.task}", model, clean, corrupt, metric, a.method, a.skip_old, auto, a.scores_dir, a.repeats)


if __name__ == "__main__":
    main()
