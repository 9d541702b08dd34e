"""auto-circuit 1.0.1 as a baseline evaluator of edge circuits for benchmarks/edges.py (see its docstring for the
install and the TransformerLens 3.x aliases). Importing this module raises ImportError where auto-circuit is absent.

The same circuits as ours: every edge outside circuit c gets auto-circuit patch mask 1 (resample ablation from the
counterfactual prompts' source outputs, `src_ablations`), every edge inside it 0; one forward per circuit and
batch of equal-length pairs, as auto-circuit's `run_circuits` does, then our metric on the last position's logits.
The graph is built once, on a copy of the model (auto-circuit wraps the modules it patches in place); the evaluator
it returns is what benchmarks/edges.py times, alternating with ours.
"""

from __future__ import annotations

import copy
import sys
import time
from collections import defaultdict

import torch
import transformer_lens as tl
from transformer_lens.cache import key_value_cache as _kvc

# auto-circuit names TransformerLens 1.x/2.x's KV-cache class in imports only; 3.x renamed and moved it.
tl.HookedTransformerKeyValueCache = _kvc.TransformerLensKeyValueCache
_kvc.HookedTransformerKeyValueCache = _kvc.TransformerLensKeyValueCache
sys.modules.setdefault("transformer_lens.past_key_value_caching", _kvc)

from auto_circuit.types import AblationType  # noqa: E402
from auto_circuit.utils.ablation_activations import src_ablations  # noqa: E402
from auto_circuit.utils.graph_utils import patch_mode, patchable_model  # noqa: E402

from mcp_interp.methods.core.sites import n_kv_heads  # noqa: E402


def _src_name(s) -> str:
    return {"embed": "Resid Start", "z": f"A{s.layer}.{s.head}", "mlp_out": f"MLP {s.layer}"}[s.kind]


def _dest_names(r, cfg, rep: int) -> list[str]:
    """auto-circuit's destinations for our receiver: under GQA (rep query heads per key-value head) a key/value
    group's input is the k/v inputs of every query head in the group (the ungrouped model repeats them)."""
    if r.kind == "q":
        return [f"A{r.layer}.{r.head}.Q"]
    if r.kind in ("k", "v"):
        return [f"A{r.layer}.{h}.{r.kind.upper()}" for h in range(cfg.n_heads) if h // rep == r.head]
    return [f"MLP {r.layer}"] if r.kind == "mlp_in" else ["Resid End"]


def auto_circuit_evaluator(model, S, R, allowed, keep, clean, corrupt, metric, batch_size: int = 16):
    """A function of no arguments returning the metric [K] (mean over examples) of circuits keep [K, n_allowed]
    (row-major allowed-edge order) under auto-circuit. Builds the graph now, on a copy of `model`: the
    construction is reported, not part of what the function's caller times; `model` itself is left as it was."""
    t0 = time.perf_counter()
    model = copy.deepcopy(model)
    cfg = model.cfg
    rep = cfg.n_heads // n_kv_heads(cfg)
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    if not cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    if rep > 1:
        # same numbers; one k/v input per query head, as auto-circuit expects
        cfg.ungroup_grouped_query_attention = True
    pm = patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True,
                         device=torch.device(cfg.device))
    by_name = {(e.src.name, e.dest.name): e for e in pm.edges}
    # per destination module: flat positions in its patch_mask <- flat (sender, receiver) positions in our mask
    pos: dict[str, list[int]] = defaultdict(list)
    ours: dict[str, list[int]] = defaultdict(list)
    n_mapped = 0
    for i, j in allowed.nonzero().tolist():
        for dest in _dest_names(R[j], cfg, rep):
            e = by_name[(_src_name(S[i]), dest)]
            m = e.patch_mask(pm)
            pos[e.dest.module_name].append(int(torch.tensor(e.patch_idx) @ torch.tensor(m.stride())))
            ours[e.dest.module_name].append(i * len(R) + j)
            n_mapped += 1
    assert n_mapped == len(pm.edges), (n_mapped, len(pm.edges))  # the two graphs have the same edges
    modules = {name: next(e for e in pm.edges if e.dest.module_name == name).patch_mask(pm) for name in pos}
    pos_t = {k: torch.tensor(v) for k, v in pos.items()}
    ours_t = {k: torch.tensor(v) for k, v in ours.items()}
    print(f"auto-circuit: {len(pm.edges)} edges, graph built in {time.perf_counter() - t0:.1f} s (not timed)")
    full = torch.zeros(len(keep), *allowed.shape)
    full[:, allowed] = (~keep).float()
    groups: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(clean):
        groups[len(c)].append(i)
    dev = cfg.device

    def evaluate() -> torch.Tensor:
        tot = torch.zeros(len(keep))
        with torch.no_grad():
            for _, idx_all in sorted(groups.items()):
                for a in range(0, len(idx_all), batch_size):
                    idx = torch.tensor(idx_all[a:a + batch_size])
                    x = torch.stack([clean[i] for i in idx]).to(dev)
                    xc = torch.stack([corrupt[i] for i in idx]).to(dev)
                    patch = src_ablations(pm, xc, AblationType.RESAMPLE)
                    with patch_mode(pm, patch):
                        for c in range(len(keep)):
                            flat = full[c].view(-1)
                            for name, m in modules.items():
                                m.data.view(-1)[pos_t[name].to(m.device)] = flat[ours_t[name]].to(m.device, m.dtype)
                            logits = pm(x)[pm.out_slice]
                            tot[c] += metric.from_logits(model, logits, idx).sum().cpu()
        return tot / len(clean)

    return evaluate
