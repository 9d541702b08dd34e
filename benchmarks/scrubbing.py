"""Causal scrubbing: the batched, deduplicated executor against the per-run executor it replaced.

    python benchmarks/scrubbing.py [--model smollm2-135m|planted-clean] [--n 16] [--seeds 3] [--repeats 2]
                                   [--threads 2] [--hypothesis name-movers|late-END|everything]

A request as the tool makes it by default: the hypothesis under resampling and both ablations (zero, mean)
over the seeds, plus per-node contributions (each node dropped, each interpretation sharpened), from a
fresh Scrubber (the clean caches are part of the cost). Default: the six name-mover heads of the demo
on SmolLM2 IOI, n = 16, 3 seeds.

New: `scrub_hypothesis` (every run of the request planned first, then evaluated together: rows interned
by signature, each distinct stage input computed once, inputs assembled only at the positions their
component uses, one unembedding copy per wave). Baseline ("per-run"): the executor of commit 9c65f61,
copied below, which evaluates one (hypothesis, mode, seed, layout) tree at a time, every copy of a stage in
one call over all n references, and scores it, on the very same sampled plans. Both run in this process,
`--repeats` times each, alternating which goes first (benchmarks/_timing.py); the script prints each side's
median time, the median ratio with its min-max spread, the max |difference| of every per-seed loss and metric,
and the profile of one call of each (cProfile, top entries).

Measured before the sides alternated (the per-run baseline always ran first and absorbed the cold start; 2 shared
cores, load 11-14 from other jobs, --repeats 1; ratios swing with the load; not re-measured since):
  name-movers, smollm2-135m, n 16, 3 seeds: per-run 164.8 s, batched 30.0 s (5.5x); another run 104.7 s vs
    34.3 s (3.1x); 374 distinct rows computed of 4752; max |difference| 0.0. Per-run profile: W_U.T copies in
    Unembed ~30 %, clean-output lookups ~30 %, input assembly ~15 %; batched: the clean forward ~65 %.
  planted, planted-clean, n 64, 3 seeds: 18.5 s vs 0.76 s (24x), 2957 of 5760 rows, max |difference| 0.0.
Alternating, default request (name-movers, smollm2-135m, n 16, 3 seeds), `--repeats 2`, quiet 2-core machine:
per-run 7.51 s, batched 1.26 s (medians), 6.2x (4.6-7.7) wall, 4.9x (4.0-5.9) CPU, 374 of 4752 rows, max
|difference| 0.
Alternating, `--model planted-clean --hypothesis planted --n 64 --repeats 6` (load ~5 on the 2 cores): per-run
1.62 s, batched 0.53 s (medians), speed-up 2.5x (1.7-3.5) wall, 2.5x (1.7-4.4) CPU, 2957 of 5760 rows, max
|difference| 0. The baseline imports the executor's present CleanRun, Background and unembed_last, which have
changed since the 18.5 s above; why the per-run side is now ~10x faster was not investigated.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import pstats
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks._timing import add_repeats, alternate, report  # noqa: E402
from mcp_interp.methods.core.progress import check_cancelled  # noqa: E402
from mcp_interp.methods.core.sites import n_kv_heads  # noqa: E402
from mcp_interp.methods.scrubbing import Compiled, Scrubber, check_hypothesis, everything_matters, scrub_hypothesis  # noqa: E402
from mcp_interp.methods.scrubbing.executor import (  # noqa: E402
    ROW_BUDGET_BYTES,
    Background,
    CleanRun,
    Mode,
    device_of,
    input_key,
    unembed_last,
)
from mcp_interp.methods.scrubbing.nodes import INPUT, OUTPUT, reachable  # noqa: E402
from mcp_interp.methods.scrubbing.tree import TreePlan  # noqa: E402

# ---------------------------------------------------------------- the per-run executor of 9c65f61 (baseline)

class PerRunExecutor:
    """Evaluates a TreePlan bottom-up; every copy of a stage in one batched call.

    `positions`: node index -> [p] token indices (tree.resolve_positions); `shortcuts`: take known results
    (exact copies, copies fed only by their random input) from the clean run instead of computing them.
    `rows_run` counts copies x examples computed.
    """

    def __init__(self, model, compiled: Compiled, clean: CleanRun, positions: dict[int, np.ndarray], mode: Mode,
                 shortcuts: bool = True, should_cancel: Callable[[], bool] | None = None):
        self.model, self.compiled, self.clean, self.mode = model, compiled, clean, mode
        self.dev = device_of(model)
        self.pos = {k: torch.as_tensor(v, device=self.dev) for k, v in positions.items()}
        self.bg = Background(clean, mode)
        self.shortcuts, self.should_cancel = shortcuts, should_cancel
        self.rows_run = 0
        cfg = model.cfg
        per_row = 4 * clean.T * (14 * cfg.d_model + 4 * cfg.n_heads * clean.T + 3 * cfg.n_heads * cfg.d_head)
        self.max_rows = max(1, ROW_BUDGET_BYTES // per_row)

    @torch.inference_mode()
    def run(self, plan: TreePlan) -> Tensor:
        """Final-position logits of the scrubbed model for every reference: [n, d_vocab] float32."""
        nodes = self.compiled.nodes
        outs: dict[int, Tensor] = {}
        stages: dict[int, list[int]] = {}
        for tid, t in enumerate(plan.nodes):
            stages.setdefault(nodes[t.node].stage, []).append(tid)
        for stage in sorted(stages):
            check_cancelled(self.should_cancel, "scrubbing")
            todo = []
            for tid in stages[stage]:
                t, c = plan.nodes[tid], nodes[plan.nodes[tid].node]
                x = torch.as_tensor(t.x, device=self.dev)
                r = torch.as_tensor(t.r, device=self.dev)
                if c.kind == OUTPUT and t.exact:
                    outs[tid] = self.clean.logits(x)
                elif c.kind == OUTPUT and self.shortcuts and self.mode == "resample" and not t.children:
                    outs[tid] = self.clean.logits(r)  # nothing matters: the output on r
                elif c.kind != OUTPUT and (t.exact or c.leaf):
                    outs[tid] = self.clean.out(c, x, self.pos[c.index])  # a leaf, or provably exact
                elif self.shortcuts and self.mode == "resample" and not t.children:
                    outs[tid] = self.clean.out(c, r, self.pos[c.index])  # every input from r
                else:
                    todo.append(tid)
            for a in range(0, len(todo), max(1, self.max_rows // plan.n)):
                chunk = todo[a:a + max(1, self.max_rows // plan.n)]
                for tid, val in zip(chunk, self._compute(plan, chunk, outs)):
                    outs[tid] = val
        return outs[0]

    def _inputs(self, plan: TreePlan, tid: int, outs: dict[int, Tensor]) -> dict[str, Tensor]:
        """The input of one copy along each of its paths: [n, T, d_model]."""
        t, c = plan.nodes[tid], self.compiled.nodes[plan.nodes[tid].node]
        r = torch.as_tensor(t.r, device=self.dev)
        base = self.bg.resid(input_key(c, self.model.cfg), r)
        paths = list(c.paths) or ["resid"]
        res = {p: base if len(paths) == 1 else base.clone() for p in paths}
        for path, pi, cid in t.children:
            p, pos = self.compiled.nodes[pi], self.pos[pi]
            delta = outs.pop(cid)
            bg = self.bg.out(p, r, pos)
            res[path][:, pos] += delta if bg is None else delta - bg
        return res

    def _compute(self, plan: TreePlan, tids: list[int], outs: dict[int, Tensor]) -> list[Tensor]:
        nodes = self.compiled.nodes
        kind = nodes[plan.nodes[tids[0]].node].kind
        inputs = [self._inputs(plan, tid, outs) for tid in tids]
        self.rows_run += plan.n * len(tids)
        if kind == OUTPUT:
            return [unembed_last(self.model, i["resid"]) for i in inputs]
        if kind == "resid":
            res = [i["resid"] for i in inputs]
        elif kind == "mlp":
            l = nodes[plan.nodes[tids[0]].node].layer
            block = self.model.blocks[l]
            full = block.apply_mlp(block.ln2(torch.cat([i["resid"] for i in inputs])))
            res = list(full.split(plan.n))
        else:
            res = self._heads(plan, tids, inputs)
        return [v[:, self.pos[plan.nodes[tid].node]] for tid, v in zip(tids, res)]

    def _heads(self, plan: TreePlan, tids: list[int], inputs: list[dict[str, Tensor]]) -> list[Tensor]:
        """Copies of heads of one layer, inputs [n, T, d_model] per path each -> outputs [n, T, d_model] each."""
        nodes, cfg = self.compiled.nodes, self.model.cfg
        site = nodes[plan.nodes[tids[0]].node].site  # hook_z of the layer (every head of it)
        l = site.layer
        block = self.model.blocks[l]
        qkv = {}
        for p in ("q", "k", "v"):
            if p == "q" or not all("resid" in i for i in inputs):
                qkv[p] = torch.cat([i.get(p, i.get("resid")) if (p in i or "resid" in i) else self._plain(plan, tid)
                                    for tid, i in zip(tids, inputs)])
        same = all("resid" in i for i in inputs)  # one input shared by q, k and v
        q = block.ln1(qkv["q"])
        k, v = (q, q) if same else (block.ln1(qkv["k"]), block.ln1(qkv["v"]))
        if self.clean.sf is not None:
            q, k = q + self.clean.sf, k + self.clean.sf
        if cfg.use_split_qkv_input or cfg.use_attn_in:
            kv_heads = n_kv_heads(cfg)
            q = q[:, :, None].expand(-1, -1, cfg.n_heads, -1)
            k, v = (t[:, :, None].expand(-1, -1, kv_heads, -1) for t in (k, v))
        got: list[Tensor] = []
        with self.model.hooks(fwd_hooks=[(site.hook, lambda z, hook: got.append(z))]):
            block.attn(query_input=q, key_input=k, value_input=v)
        z = got[0]  # [rows, T, heads, d_head]
        heads = torch.tensor([nodes[plan.nodes[tid].node].head for tid in tids], device=self.dev)
        heads = heads.repeat_interleave(plan.n)
        rows = torch.arange(z.shape[0], device=self.dev)
        zh = z[rows, :, heads]  # [rows, T, d_head]
        out = zh.new_empty(*zh.shape[:2], cfg.d_model)
        for h in heads.unique().tolist():
            sel = heads == h
            out[sel] = zh[sel] @ block.attn.W_O[h]  # 9c65f61 read the same weights through CleanRun.W_O
        return list(out.split(plan.n))

    def _plain(self, plan: TreePlan, tid: int) -> Tensor:
        """A q/k/v path the hypothesis does not list: its whole input comes from the background."""
        t, c = plan.nodes[tid], self.compiled.nodes[plan.nodes[tid].node]
        return self.bg.resid(input_key(c, self.model.cfg), torch.as_tensor(t.r, device=self.dev))



def per_run_request(model, ds, hyp, seeds, ablations, shortcuts=True) -> dict:
    """The old scrub_hypothesis loop on a fresh Scrubber: every (hypothesis, mode, seed, layout) run alone.
    Returns {(variant, mode): (losses [seeds, n], metrics [seeds, n])}."""
    sc = Scrubber(model, ds, shortcuts=shortcuts)
    compiled = check_hypothesis(hyp, ds.spec, model)
    out = {}
    for key, comp, mode in _requests(compiled, ds, model, ablations):
        planned = sc.plan(comp, seeds)  # the same draws: plans depend only on (hypothesis, seed, layout)
        losses, metrics = [], []
        for si in range(len(seeds)):
            lg = torch.empty_like(sc.logits_model)
            for gi, g in enumerate(sc.groups):
                positions, plans = planned.groups[gi]
                ex = PerRunExecutor(model, comp, sc.clean[gi], positions, mode, shortcuts)
                lg[torch.as_tensor(g.idx)] = ex.run(plans[si]).cpu()
            ls, ms = sc.score.score(lg, torch.arange(len(ds)))
            losses.append(ls)
            metrics.append(ms)
        out[key] = (np.stack(losses), np.stack(metrics))
    return out


def _requests(compiled, ds, model, ablations):
    """(key, compiled, mode) of every run of a default request, as the old loop built them (deep copies)."""
    hyp = compiled.hypothesis
    yield ("full", "resample"), compiled, "resample"
    for m in ablations:
        yield ("full", m), compiled, m
    reach = {compiled.nodes[i].name for i in reachable(compiled.nodes)}
    for n in compiled.nodes[:-1]:
        if n.name not in reach:
            continue
        h = hyp.model_copy(deep=True)
        for x in h.nodes:
            if x.parents is not None:
                x.parents = [p for p in x.parents if p != n.name]
            if x.inputs is not None:
                x.inputs = {k: [p for p in v if p != n.name] for k, v in x.inputs.items()}
        h.output.parents = [p for p in h.output.parents if p != n.name]
        yield (n.name, "drop"), check_hypothesis(h, ds.spec, model), "resample"
        if n.interp != INPUT:
            h = hyp.model_copy(deep=True)
            h.node(n.name).interp = INPUT
            yield (n.name, "sharpen"), check_hypothesis(h, ds.spec, model), "resample"


def new_request(model, ds, hyp, seeds, ablations) -> tuple[dict, object]:
    """The new path: scrub_hypothesis on a fresh Scrubber; per-seed losses and metrics by the same keys."""
    sc = Scrubber(model, ds)
    res = scrub_hypothesis(model, ds, hyp, seeds=seeds, ablations=ablations, scrubber=sc)
    out = {("full", "resample"): res.scrubbed.loss.per_seed + res.scrubbed.metric.per_seed}
    out |= {("full", m): s.loss.per_seed + s.metric.per_seed for m, s in res.ablations.items()}
    for c in res.contributions:
        out[(c.name, "drop")] = c.dropped.loss.per_seed + c.dropped.metric.per_seed
        if c.sharpened is not None:
            out[(c.name, "sharpen")] = c.sharpened.loss.per_seed + c.sharpened.metric.per_seed
    return out, (res, sc)


def differences(new, old) -> float:
    """max |difference| between the batched request's per-seed loss and metric means and the per-run ones."""
    new = new[0]
    assert set(old) == set(new), (set(old) ^ set(new))
    return max(float(np.abs(np.asarray(new[k]) - np.concatenate([L.mean(1), M.mean(1)])).max())
               for k, (L, M) in old.items())


def load(model_name: str, n: int):
    from mcp_interp.tasks.builtin import BUILTIN_TASKS
    from mcp_interp.tasks.dataset import build_dataset

    if model_name == "smollm2-135m":
        from mcp_interp.models.smollm2 import load_smollm2

        lm = load_smollm2(None, "cpu")
        return lm.model, build_dataset(BUILTIN_TASKS["ioi"], lm.tokenizer, n, seed=0)
    from mcp_interp.models.toy import build_toy, get_toy
    from mcp_interp.tasks.spec import TaskSpec
    from mcp_interp.toymodels.planted import PLANTED_TASK

    model, tok = build_toy(get_toy(model_name))
    return model, build_dataset(TaskSpec.model_validate(PLANTED_TASK), tok, n, seed=0)


MOVERS = [(23, 3), (20, 0), (29, 1), (23, 0), (24, 4), (29, 0)]  # the demo's name-movers (server/demo.py)


def hypothesis(name: str, model) -> dict:
    if name == "everything":
        return everything_matters(model)
    if name == "late-END":
        return {"name": "late-END", "interp": [{"name": "IO", "value": "IO"}], "output": {"parents": ["r24"]},
                "nodes": [{"name": "r24", "kind": "resid", "layer": 24, "position": "END", "interp": "IO"}]}
    if name == "planted":
        return {"name": "planted", "interp": [{"name": "x", "value": "x"}, {"name": "y", "value": "y"}],
                "output": {"parents": ["mapper"]}, "nodes": [
                    {"name": "mapper", "kind": "mlp", "layer": 1, "position": "END", "interp": "y",
                     "parents": ["mover"]},
                    {"name": "mover", "kind": "head", "layer": 0, "head": 0, "position": "END", "interp": "x",
                     "parents": ["emb_x"]},
                    {"name": "emb_x", "kind": "embed", "position": "X", "interp": "x"}]}
    return {"name": "name-movers", "interp": [{"name": "IO", "value": "IO"}],
            "output": {"parents": [f"L{l}H{h}" for l, h in MOVERS]},
            "nodes": [{"name": f"L{l}H{h}", "kind": "head", "layer": l, "head": h, "position": "END",
                       "interp": "IO"} for l, h in MOVERS]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hypothesis", default="name-movers")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3)
    add_repeats(ap)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, ds = load(args.model, args.n)
    hyp = hypothesis(args.hypothesis, model)
    seeds, abl = list(range(args.seeds)), ("zero", "mean")
    t = alternate({"batched": lambda: new_request(model, ds, copy.deepcopy(hyp), seeds, abl),
                   "per-run": lambda: per_run_request(model, ds, copy.deepcopy(hyp), seeds, abl)}, args.repeats)
    print(f"{args.hypothesis} on {args.model}, n={args.n}, {args.seeds} seeds, ablations zero+mean, "
          f"{len(t.first('per-run'))} (hypothesis, mode) requests x seeds, threads={args.threads}")
    report(t, "batched", diff=differences, what="difference of per-seed loss/metric means")
    new, (res, sc) = t.first("batched")
    print(f"rows computed {sc.rows_run} of {sc.rows_asked} asked")
    print(f"loss recovered {res.scrubbed.recovered.mean:.4f}; zero {res.ablations['zero'].recovered.mean:.4f}; "
          f"mean {res.ablations['mean'].recovered.mean:.4f}")
    for name, fn in (("per-run", lambda: per_run_request(model, ds, copy.deepcopy(hyp), seeds, abl)),
                     ("new", lambda: new_request(model, ds, copy.deepcopy(hyp), seeds, abl))):
        pr = cProfile.Profile()
        pr.enable()
        fn()
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(12)
        print(f"\n--- profile of one {name} request (tottime) ---")
        print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[:4000])


if __name__ == "__main__":
    main()
