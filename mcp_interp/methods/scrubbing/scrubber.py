"""Causal scrubbing of a hypothesis (Chan et al., Redwood Research 2022): how much behaviour survives
when every activation is resampled in every way the hypothesis says cannot matter.

    res = scrub_hypothesis(model, dataset, hypothesis, seeds=(0, 1, 2))
    res.scrubbed.recovered.mean      # loss recovered, mean over seeds
    res.summary()                    # JSON-ready, no arrays

Semantics of the hypothesis: hypothesis.py (its compiled nodes and their core Sites: nodes.py).
Treeification and sampling: tree.py. Batched execution: executor.py. Loss, metric and baselines:
score.py.

Beside the score of the hypothesis (resampling ablation, as the method defines it), it reports the
same tree with the unimportant contributions zero- or mean-ablated instead (for contrast: those take
the model off distribution), and per-node contributions: the score when a node's claim is dropped
(it becomes unimportant everywhere) and when its correspondence is sharpened to the whole input
(how much its interpretation node costs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...tasks.dataset import TaskDataset
from ..core.progress import Progress
from .executor import CleanRun, Executor, Mode, check_architecture, device_of
from .hypothesis import Hypothesis, check_hypothesis
from .nodes import INPUT, OUTPUT, Compiled, reachable
from .score import SeedStats, TaskScore, recovered, recovered_metric
from .tree import (Sampler, TreeTooLarge, exact_nodes, interp_values, layout_groups, plan_tree, position_warnings,
                   resolve_positions, tree_size)

__all__ = ["Contribution", "Scores", "ScrubResult", "Scrubber", "graph_data", "scrub_hypothesis"]


@dataclass
class Scores:
    """One hypothesis under one ablation mode, over the seeds: each score's mean, std and per-seed values
    (a seed's value is over all n examples), and per-example loss and metric averaged over seeds ([n])."""

    loss: SeedStats  # L_scrubbed
    metric: SeedStats  # m_scrubbed
    recovered: SeedStats  # (L_random - L_scrubbed) / (L_random - L_model)
    recovered_metric: SeedStats  # (m_scrubbed - m_random) / (m_model - m_random)
    per_example_loss: np.ndarray  # [n], mean over seeds
    per_example_metric: np.ndarray

    def as_dict(self) -> dict:
        """The four SeedStats, JSON-ready (no per-example arrays)."""
        return {k: getattr(self, k).as_dict() for k in ("recovered", "recovered_metric", "loss", "metric")}


@dataclass
class Contribution:
    """What one node's claims are worth: drop_effect = recovered(full) - recovered(node dropped);
    sharpen_effect = recovered(node through the whole input) - recovered(full), None when it already is."""

    name: str
    label: str
    interp: str
    dropped: Scores
    drop_effect: float
    drop_effect_metric: float
    sharpened: Scores | None = None
    sharpen_effect: float | None = None
    sharpen_effect_metric: float | None = None

    def as_dict(self) -> dict:
        """JSON-ready: the dropped / sharpened loss recovered and the effects (no per-example arrays)."""
        return {"name": self.name, "label": self.label, "interp": self.interp,
                "recovered_dropped": self.dropped.recovered.as_dict(), "drop_effect": self.drop_effect,
                "drop_effect_metric": self.drop_effect_metric,
                "recovered_sharpened": self.sharpened.recovered.as_dict() if self.sharpened else None,
                "sharpen_effect": self.sharpen_effect, "sharpen_effect_metric": self.sharpen_effect_metric}


@dataclass
class ScrubResult:
    """What `scrub_hypothesis` returns: baselines (mean over the n examples), the hypothesis's scores under
    resampling and each extra ablation, per-node contributions, the plot-ready `graph` (graph_data), the
    tree's size, interpretation-node statistics, warnings, and `per_example` arrays ([n] each: loss and
    metric of the model, of random inputs and scrubbed)."""

    hypothesis: str
    n: int
    seeds: list[int]
    metric_name: str
    loss_model: float
    loss_random: float
    metric_model: float
    metric_random: float
    scrubbed: Scores
    ablations: dict[str, Scores]
    contributions: list[Contribution]
    graph: dict
    tree: dict
    interp_stats: dict[str, dict]
    warnings: list[str]
    seconds: float
    per_example: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self) -> dict:
        """Everything but the per-example arrays, JSON-ready."""
        return {
            "hypothesis": self.hypothesis, "n": self.n, "seeds": self.seeds, "metric": self.metric_name,
            "loss": {"model": self.loss_model, "random": self.loss_random},
            "metric_values": {"model": self.metric_model, "random": self.metric_random},
            "scrubbed": self.scrubbed.as_dict(),
            "ablations": {k: v.as_dict() for k, v in self.ablations.items()},
            "contributions": [c.as_dict() for c in self.contributions],
            "graph": self.graph, "tree": self.tree, "interp_stats": self.interp_stats,
            "warnings": self.warnings, "seconds": self.seconds,
        }


class Scrubber:
    """One model and dataset: clean runs and baselines computed once, then any number of hypotheses.

    `shortcuts` skips work whose result is known exactly (a copy whose every input comes from its
    random input is that input's clean output; a copy whose parents add up to its whole input through
    `input` is its own input's clean output, and is not expanded). Results are the same either way up
    to float noise; tests turn it off to exercise the full computation.

    Holds the model's final-position logits `logits_model` [n, d_vocab] and the per-example baselines
    `loss_model`, `metric_model`, `loss_random`, `metric_random` ([n] each, dataset order).
    """

    def __init__(self, model, dataset: TaskDataset, *, shortcuts: bool = True, max_tree_nodes: int = 20_000):
        check_architecture(model)
        self.model, self.ds = model, dataset
        self.shortcuts, self.max_tree_nodes = shortcuts, max_tree_nodes
        self.groups = layout_groups(dataset)
        dev = device_of(model)
        self.score = TaskScore(dataset)
        self.clean: list[CleanRun] = []
        n, logits = len(dataset), None
        with torch.inference_mode():
            for g in self.groups:
                toks = torch.tensor([dataset.examples[i].tokens for i in g.idx], device=dev)
                run = CleanRun(model, toks)
                self.clean.append(run)
                lg = run.logits(torch.arange(len(g.idx), device=dev)).cpu()
                logits = torch.empty(n, lg.shape[-1]) if logits is None else logits
                logits[torch.as_tensor(g.idx)] = lg
        self.logits_model = logits
        labels = torch.arange(n)
        self.loss_model, self.metric_model = self.score.score(logits, labels)
        self.loss_random, self.metric_random = np.empty(n), np.empty(n)
        for g in self.groups:
            self.loss_random[g.idx], self.metric_random[g.idx] = self.score.random(logits, g.idx)
        self.rows_run = 0  # copies x examples computed so far (work done, for cost reports)

    def copies(self, compiled: Compiled) -> int:
        """Copies of model nodes in the tree (the largest over token layouts)."""
        sizes = []
        for g in self.groups:
            positions = resolve_positions(compiled, g)
            sizes.append(tree_size(compiled, exact_nodes(compiled, positions, g.length) if self.shortcuts else set()))
        return max(sizes)

    def logits(self, compiled: Compiled, mode: Mode, seed: int,
               should_cancel: Callable[[], bool] | None = None) -> torch.Tensor:
        """Scrubbed final-position logits for every example, in dataset order: [n, d_vocab] float32 on the CPU.
        One tree sample per (seed, layout group)."""
        out = torch.empty_like(self.logits_model)
        values = interp_values(compiled, self.ds)
        for gi, g in enumerate(self.groups):
            positions = resolve_positions(compiled, g)
            exact = exact_nodes(compiled, positions, g.length) if self.shortcuts else set()
            sampler = Sampler(values, g.idx, np.random.default_rng([seed, gi]))
            plan = plan_tree(compiled, sampler, exact, self.max_tree_nodes)
            ex = Executor(self.model, compiled, self.clean[gi], positions, mode, self.shortcuts, should_cancel)
            out[torch.as_tensor(g.idx)] = ex.run(plan).cpu()
            self.rows_run += ex.rows_run
        return out

    def scores(self, compiled: Compiled, mode: Mode, seeds: Sequence[int], tick: Callable[[], None] = lambda: None,
               should_cancel: Callable[[], bool] | None = None) -> Scores:
        """Loss, metric and both recovery scores of one hypothesis under one ablation mode, over seeds; `tick`
        is called after each seed."""
        losses, metrics = [], []
        for s in seeds:
            ls, ms = self.score.score(self.logits(compiled, mode, s, should_cancel), torch.arange(len(self.ds)))
            losses.append(ls)
            metrics.append(ms)
            tick()
        L, M = np.stack(losses), np.stack(metrics)  # [seeds, n]
        lm, lr = float(self.loss_model.mean()), float(self.loss_random.mean())
        mm, mr = float(self.metric_model.mean()), float(self.metric_random.mean())
        return Scores(SeedStats.of(L.mean(1)), SeedStats.of(M.mean(1)),
                      SeedStats.of([recovered(lr, l, lm) for l in L.mean(1)]),
                      SeedStats.of([recovered_metric(m, mr, mm) for m in M.mean(1)]), L.mean(0), M.mean(0))


def _drop(hyp: Hypothesis, name: str) -> Hypothesis:
    h = hyp.model_copy(deep=True)
    h.name = f"{hyp.name} - {name}"
    for n in h.nodes:
        if n.parents is not None:  # an emptied list stays [] (nothing matters), not None (a leaf)
            n.parents = [p for p in n.parents if p != name]
        if n.inputs is not None:
            n.inputs = {k: [p for p in v if p != name] for k, v in n.inputs.items()}
    h.output.parents = [p for p in h.output.parents if p != name]
    return h


def _sharpen(hyp: Hypothesis, name: str) -> Hypothesis:
    h = hyp.model_copy(deep=True)
    h.name = f"{hyp.name} ~ {name}"
    h.node(name).interp = INPUT
    return h


def graph_data(compiled: Compiled, contributions: list[Contribution]) -> dict:
    """Plot-ready hypothesis graph: nodes (name, label, schema kind / layer / head, position, interp, stage,
    and their contributions) and edges (parent -> child, by path). Drawn by artifacts.graph_plot."""
    contrib = {c.name: c for c in contributions}
    nodes, edges = [], []
    for c in compiled.nodes:
        k = contrib.get(c.name)
        nodes.append({"name": c.name, "label": c.label, "kind": c.kind, "layer": c.layer, "head": c.head,
                      "position": c.position, "interp": c.interp, "stage": c.stage,
                      "drop_effect": k.drop_effect if k else None, "sharpen_effect": k.sharpen_effect if k else None})
        for path, parents in c.paths.items():
            for p in parents:
                p_ = compiled.nodes[p]
                edges.append({"source": p_.name, "target": c.name, "path": path, "interp": p_.interp})
    return {"nodes": nodes, "edges": edges, "value": "drop_effect",
            "value_meaning": "loss recovered lost when the node's claim is dropped (node made unimportant)"}


def scrub_hypothesis(model, dataset: TaskDataset, hypothesis: Hypothesis | dict, *, seeds: Sequence[int] = (0, 1, 2),
                     ablations: Sequence[Mode] = ("zero", "mean"), contributions: bool = True,
                     max_tree_nodes: int = 20_000, shortcuts: bool = True, progress: Progress | None = None,
                     should_cancel: Callable[[], bool] | None = None, scrubber: Scrubber | None = None) -> ScrubResult:
    """Score `hypothesis` on `dataset` by causal scrubbing; see the module docstring.

    Every example is the reference input once per seed (`seeds` seed the resampling). `scrubber`
    reuses the clean runs of an earlier call on the same model and dataset (its shortcuts and
    max_tree_nodes then apply). Raises HypothesisError (naming the field) for an invalid hypothesis,
    ValueError for an unsupported architecture, Cancelled when should_cancel() turns true.
    """
    t0 = time.perf_counter()
    compiled = check_hypothesis(hypothesis, dataset.spec, model)
    hyp = compiled.hypothesis
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds: give at least one resampling seed")
    if scrubber is not None and (scrubber.model is not model or scrubber.ds is not dataset):
        raise ValueError("scrubber: it was built for another model or dataset")
    sc = scrubber or Scrubber(model, dataset, shortcuts=shortcuts, max_tree_nodes=max_tree_nodes)
    rows0 = sc.rows_run
    reach = {compiled.nodes[i].name for i in reachable(compiled.nodes)}
    variants = [(n.name, _drop(hyp, n.name), _sharpen(hyp, n.name) if n.interp != INPUT else None)
                for n in compiled.nodes[:-1] if n.name in reach] if contributions else []
    total = len(seeds) * (1 + len(ablations) + sum(1 + (s is not None) for _, _, s in variants))
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0] / total, f"scrubbing: {done[0]}/{total} runs")

    full = sc.scores(compiled, "resample", seeds, tick, should_cancel)
    abl = {m: sc.scores(compiled, m, seeds, tick, should_cancel) for m in ablations}
    contribs, warnings, skipped = [], list(compiled.warnings), []
    for name, dropped, sharp in variants:
        node = compiled.by_name(name)
        try:  # a variant can treeify into far more copies (its nodes lose exactness): skip it then
            d = sc.scores(check_hypothesis(dropped, dataset.spec, model), "resample", seeds, tick, should_cancel)
            k = Contribution(name, node.label, node.interp, d, full.recovered.mean - d.recovered.mean,
                             full.recovered_metric.mean - d.recovered_metric.mean)
            if sharp is not None:
                s = sc.scores(check_hypothesis(sharp, dataset.spec, model), "resample", seeds, tick, should_cancel)
                k.sharpened, k.sharpen_effect = s, s.recovered.mean - full.recovered.mean
                k.sharpen_effect_metric = s.recovered_metric.mean - full.recovered_metric.mean
        except TreeTooLarge:
            skipped.append(name)
            continue
        contribs.append(k)
    if skipped:
        warnings.append(f"contributions of {len(skipped)} node(s) not computed ({', '.join(skipped[:8])}"
                        f"{', ...' if len(skipped) > 8 else ''}): dropping or sharpening them treeifies into more "
                        f"than max_tree_nodes={sc.max_tree_nodes} copies")
    for g in sc.groups:
        warnings += [w for w in position_warnings(compiled, resolve_positions(compiled, g)) if w not in warnings]
    stats = _interp_stats(compiled, sc)
    for name, st in stats.items():
        if name != INPUT and st["mean_agreeing_inputs"] < 1.5:
            warnings.append(f"interp {name!r}: almost every input agrees only with itself, so claims through it "
                            f"are barely tested (as if through 'input'); use a coarser value or more examples")
    small = [len(g.idx) for g in sc.groups if len(g.idx) < 8]
    if small:
        warnings.append(f"{len(small)} token layout(s) with fewer than 8 examples: resampling within them is weak")
    return ScrubResult(
        hyp.name, len(dataset), seeds, dataset.spec.metric, float(sc.loss_model.mean()), float(sc.loss_random.mean()),
        float(sc.metric_model.mean()), float(sc.metric_random.mean()), full, abl, contribs,
        graph_data(compiled, contribs),
        {"copies": sc.copies(compiled), "rows_run": sc.rows_run - rows0, "layouts": len(sc.groups)},
        stats, warnings, time.perf_counter() - t0,
        {"loss_model": sc.loss_model, "loss_random": sc.loss_random, "metric_model": sc.metric_model,
         "metric_random": sc.metric_random, "loss_scrubbed": full.per_example_loss,
         "metric_scrubbed": full.per_example_metric})


def _interp_stats(compiled: Compiled, sc: Scrubber) -> dict[str, dict]:
    """Per interpretation node in use: how many values, and how many inputs of its layout (itself
    included) agree with an input on average: 1 means the claim cannot be tested."""
    used = {c.interp for c in compiled.nodes if c.kind != OUTPUT}
    values = interp_values(compiled, sc.ds)
    out = {}
    for name in sorted(used):
        counts = [Sampler(values, g.idx, np.random.default_rng(0)).agreeing_fraction(name) * len(g.idx)
                  for g in sc.groups]
        sizes = [len(g.idx) for g in sc.groups]
        out[name] = {"classes": len(set(values[name])),
                     "mean_agreeing_inputs": float(np.average(counts, weights=sizes))}
    return out
