"""DAS trainer vs the usual hook-based DAS loop (and pyvene, when importable), same process, same everything.

    python benchmarks/das.py [--model planted-direction|smollm2-135m] [--n 256] [--epochs 10] [--k 1]
                             [--batch-size 32] [--lr 1e-2] [--seed 0] [--threads 1]
                             [--site HOOK] [--head H] [--position END] [--counterfactual NAME]
                             [--pyvene-path DIR] [--skip-baseline] [--repeats 2]

Both sides get the same task, interchange data (train/test split by base prompt), site, k, epochs,
batch order, seed, optimiser (AdamW, no weight decay) and the same initial rotation: the same maths,
so their held-out IIAs should agree up to float noise (which a few hundred optimiser steps can
amplify a little); the difference and the overlap of the learned subspaces are printed. Each side trains from the
same start `--repeats` times, the sides alternating which goes first (benchmarks/_timing.py); printed: median
seconds (the whole call: caching, training, evaluation), the median speed-up with its min-max spread.

Ours: `mcp_interp.methods.das.train.train_das` (cached source/base activations, suffix-only forward from
the site on, final-position unembedding). Baseline "TL hooks": what a user writes with
TransformerLens — per step, `run_with_cache` on the source prompts for the site activation, then
`run_with_hooks` on the base prompts with a hook applying h + R R^T (h_src - h), full forward,
cross-entropy at the last position. Its IIA is evaluated the same way (full hooked forwards).

pyvene: not installed in this project's venv (its declared dependencies — datasets, accelerate,
plotnine, ipywidgets, ... — are not ones we want to pull in). Its wheel *is* reachable from PyPI and
its core imports without them: `pip download pyvene --no-deps -d /tmp/pv && cd /tmp/pv && unzip
pyvene-*.whl -d site`, then `--pyvene-path /tmp/pv/site`. It then runs as a third contender
(`IntervenableModel` + `LowRankRotatedSpaceIntervention` on the HookedTransformer through a thin
wrapper giving it `.config`/`.device`, component `tl.blocks[L].hook_resid_pre.output`; resid sites
only). Without it, the script says so and runs the TL-hook baseline alone.

Model "planted-direction": the planted toy (site blocks.1.hook_resid_pre, END, variable g).
Model "smollm2-135m": the bundled SmolLM2 on the built-in IOI task, variable IO (the answer
name); default site blocks.22.hook_resid_pre at END (name information arrives at END around layers
21-24; there full-vector patching reaches IIA ~0.5 and DAS with k = 4 more), sources from `s2_swap`.

Measured here (2 shared CPU cores, --threads 1):
  planted-direction, defaults (n 256, k 1, 10 epochs), --repeats 6 --pyvene-path (load ~5), medians: ours
    0.18 s, TL hooks 0.58 s (speed-up 3.1x, 2.4-4.3 wall; 3.1x, 2.5-4.1 CPU), pyvene 0.65 s (3.4x, 2.9-5.2
    wall; 3.4x, 2.8-5.0 CPU); held-out IIA 1.000 for all three, subspace overlap 1.0000. On a 2-layer, 81-dim
    model the fixed per-step costs that both sides pay (AdamW, the orthogonal parametrisation, autograd
    bookkeeping) are most of a step.
  smollm2-135m --n 64 --epochs 4 --k 4 --batch-size 16 --threads 2 --repeats 2 --pyvene-path (quiet, load ~1.9),
    medians: ours 3.97 s (2.5 s of the first run the one-off caching forwards), TL hooks 19.06 s (4.8x, 4.6-5.0
    wall and CPU), pyvene 19.72 s (5.0x, 4.8-5.1); held-out IIA 0.750 for all three (16 test prompts), overlap
    1.0000 / 0.9993. Ours' first run: caching 2.48 s, training 1.03 s, evaluation 0.14 s; the caching is paid once,
    so the ratio grows with epochs and n. (Before the sides alternated, one run each, ours first: 7.4 s, 40.9 s,
    38.8 s on a busier machine: 5.5x and 5.2x.)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks._timing import add_repeats, alternate, report  # noqa: E402
from mcp_interp.methods.das import Site, initial_rotation, register_orthogonal, train_das  # noqa: E402
from mcp_interp.tasks.interchange import build_interchange_dataset  # noqa: E402
from mcp_interp.tasks.spec import TaskSpec  # noqa: E402


def load(args):
    if args.model == "planted-direction":
        from mcp_interp.toymodels.planted_direction import PLANTED_DIRECTION_TASK, SITE_LAYER, build_planted_direction
        model, tok = build_planted_direction(args.seed)
        spec, variable = TaskSpec.model_validate(PLANTED_DIRECTION_TASK), "g"
        layer = SITE_LAYER if args.layer is None else args.layer
    else:
        from mcp_interp.models import ModelPool
        from mcp_interp.tasks.builtin import BUILTIN_TASKS
        lm = ModelPool(device="cpu").get(args.model)
        model, tok = lm.model, lm.tokenizer
        spec, variable = BUILTIN_TASKS["ioi"], "IO"
        layer = 22 if args.layer is None else args.layer
        args.counterfactual = args.counterfactual or "s2_swap"
    return model, tok, spec, variable, Site(args.site, layer, head=args.head)


# ---------------------------------------------------------------- baseline: the usual TL-hook loop

def _batches(examples):
    """Examples grouped by length (a user would pad; equal lengths need no mask)."""
    groups: dict[int, list] = {}
    for e in examples:
        groups.setdefault(len(e.base_tokens), []).append(e)
    return groups.values()


def _hooked_logits(model, examples, R, site: Site):
    out = []
    for group in _batches(examples):
        base = torch.tensor([e.base_tokens for e in group])
        src = torch.tensor([e.source_tokens for e in group])
        rows = torch.arange(len(group))
        bpos = torch.tensor([e.base_pos for e in group])
        spos = torch.tensor([e.source_pos for e in group])
        with torch.no_grad():
            _, cache = model.run_with_cache(src, names_filter=site.hook)
        s_src = cache[site.hook][rows, spos]
        if site.head is not None:
            s_src = s_src[:, site.head]

        def hook(act, hook):
            act = act.clone()
            h = act[rows, bpos] if site.head is None else act[rows, bpos, site.head]
            new = h + ((s_src - h) @ R) @ R.T
            if site.head is None:
                act[rows, bpos] = new
            else:
                act[rows, bpos, site.head] = new
            return act

        out.append((group, model.run_with_hooks(base, fwd_hooks=[(site.hook, hook)])[:, -1]))
    return out


class Rot(nn.Module):
    def __init__(self, init, seed):
        super().__init__()
        self.weight = nn.Parameter(init.clone())
        register_orthogonal(self, seed)  # same (seeded) completion of the d x k matrix as train_das


def iia(model, examples, R, site, logits_fn):
    with torch.no_grad():
        hits = sum(int((lg.argmax(-1) == torch.tensor([e.label_id for e in g])).sum())
                   for g, lg in logits_fn(model, examples, R, site))
    return hits / len(examples)


def train_baseline(model, data, site, args, init, logits_fn=_hooked_logits, params=None, weight=None):
    """Same schedule as train_das: AdamW, same batches (same permutation generator), same init:
    (R, train IIA, held-out IIA)."""
    rot = Rot(init, args.seed) if params is None else None
    opt = torch.optim.AdamW(rot.parameters() if rot else params, lr=args.lr, weight_decay=0.0)
    get_R = (lambda: rot.weight) if rot else weight
    g = torch.Generator().manual_seed(args.seed)
    n = len(data.train)
    for _ in range(args.epochs):
        perm = torch.randperm(n, generator=g).tolist()
        for a in range(0, n, args.batch_size):
            batch = [data.train[i] for i in perm[a:a + args.batch_size]]
            R = get_R()
            loss, cnt = 0.0, 0
            for group, logits in logits_fn(model, batch, R, site):
                labels = torch.tensor([e.label_id for e in group])
                loss = loss + F.cross_entropy(logits, labels, reduction="sum")
                cnt += len(group)
            opt.zero_grad(set_to_none=True)
            (loss / cnt).backward()
            opt.step()
    with torch.no_grad():
        R = get_R().detach().clone()
    return R, iia(model, data.train, R, site, logits_fn), iia(model, data.test, R, site, logits_fn)


# ---------------------------------------------------------------- pyvene, when importable

def pyvene_contender(model, site: Site, d: int, k: int, init, seed: int):
    import pyvene as pv

    if site.kind != "resid_pre":
        raise ValueError("the pyvene contender here supports resid_pre sites only")

    class TLWrap(nn.Module):
        def __init__(self, tl):
            super().__init__()
            self.tl, self.device = tl, tl.cfg.device
            self.config = types.SimpleNamespace(model_type="transformer_lens", hidden_size=d)

        def forward(self, input_ids):
            return types.SimpleNamespace(logits=self.tl(input_ids))

    inter = pv.LowRankRotatedSpaceIntervention(embed_dim=d, low_rank_dimension=k)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(2_000_003 + seed)  # what register_orthogonal uses: the same d x d completion
        inter.rotate_layer.weight = init.clone()  # the orthogonal parametrisation's right_inverse
    cfg = pv.IntervenableConfig(representations=[pv.RepresentationConfig(
        layer=site.layer, component=f"tl.blocks[{site.layer}].hook_resid_pre.output", unit="pos",
        low_rank_dimension=k, intervention=inter)])
    im = pv.IntervenableModel(cfg, TLWrap(model))

    def logits_fn(model_, examples, R, site_):
        out = []
        for group in _batches(examples):
            base = torch.tensor([e.base_tokens for e in group])
            src = torch.tensor([e.source_tokens for e in group])
            locs = {"sources->base": ([[[e.source_pos] for e in group]], [[[e.base_pos] for e in group]])}
            _, cf = im({"input_ids": base}, [{"input_ids": src}], unit_locations=locs)
            out.append((group, cf.logits[:, -1]))
        return out

    return list(inter.parameters()), (lambda: inter.rotate_layer.weight), logits_fn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="planted-direction", choices=["planted-direction", "smollm2-135m"])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--k", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--site", default="resid_pre", choices=["resid_pre", "resid_post", "attn_out", "mlp_out", "z"])
    ap.add_argument("--layer", type=int, default=None, help="default: the model's usual site (planted: 1, SmolLM2: 22)")
    ap.add_argument("--head", type=int, default=None)
    ap.add_argument("--position", default="END")
    ap.add_argument("--counterfactual", default=None, help="source generator (default: fresh samples; IOI: s2_swap)")
    ap.add_argument("--pyvene-path", default=None, help="directory holding an unzipped pyvene wheel")
    ap.add_argument("--skip-baseline", action="store_true")
    add_repeats(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.pyvene_path:
        sys.path.insert(0, args.pyvene_path)
    t0 = time.perf_counter()
    model, tok, spec, variable, site = load(args)
    print(f"model {args.model} loaded in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    data = build_interchange_dataset(spec, tok, variable, n=args.n, seed=args.seed, position=args.position,
                                     counterfactual=args.counterfactual)
    s = data.summary()
    print(f"task {spec.name}, variable {variable}, site {site} at {args.position}, k={args.k}, "
          f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}; train {s['n_train']} / test {s['n_test']} "
          f"(disjoint base prompts), sources: {args.counterfactual or 'fresh samples'}")
    d = site.dim(model)
    init = initial_rotation(d, args.k, args.seed)

    def ours():
        r = train_das(model, data, site, args.k, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      seed=args.seed, init_rotation=init, controls=False)
        return r.rotation, r.train.iia, r.test.iia, r

    sides = {"ours": ours}
    if not args.skip_baseline:
        sides["TL hooks"] = lambda: train_baseline(model, data, site, args, init)
        if importlib.util.find_spec("pyvene") is None:
            print("pyvene: not importable (not installed here; see --pyvene-path in the docstring)")
        else:
            def pyvene():  # a fresh intervention per run: training moves its parameters
                params, weight, logits_fn = pyvene_contender(model, site, d, args.k, init, args.seed)
                return train_baseline(model, data, site, args, init, logits_fn, params, weight)

            try:
                pyvene_contender(model, site, d, args.k, init, args.seed)
                sides["pyvene"] = pyvene
            except Exception as e:  # a contender that does not run must not hide the main comparison
                print(f"pyvene: could not run ({type(e).__name__}: {e})")
    t = alternate(sides, args.repeats)
    R, tr, te, res = t.first("ours")
    c = res.cost
    print(f"\nours: train IIA {tr:.3f}  held-out IIA {te:.3f}  (base accuracy {res.base_accuracy:.3f}); first run "
          f"{c['seconds']:.2f} s (cache {c['cache_seconds']:.2f}, train {c['train_seconds']:.2f}, "
          f"eval {c['eval_seconds']:.2f})")
    print(f"      token-layers run in training {c['suffix_token_layers']:,} vs {c['naive_train_token_layers']:,} "
          f"for full base+source forwards ({c['naive_train_token_layers'] / max(c['suffix_token_layers'], 1):.0f}x)")
    for name in list(sides)[1:]:
        R_b, tr_b, te_b = t.first(name)
        overlap = float((R.T @ R_b).pow(2).sum()) / args.k  # 1 = the same subspace
        print(f"{name}: train IIA {tr_b:.3f}  held-out IIA {te_b:.3f}  held-out IIA difference (ours - {name}) "
              f"{te - te_b:+.3f}  subspace overlap |R_ours^T R_{name}|_F^2 / k = {overlap:.4f}")
    report(t, "ours", diff=lambda o, b: abs(o[2] - b[2]), what="held-out IIA difference")


if __name__ == "__main__":
    main()
