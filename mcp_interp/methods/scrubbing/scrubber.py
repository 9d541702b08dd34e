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
from .executor import CleanRun, Executor, Mode, Run, check_architecture, device_of
from .hypothesis import Hypothesis, check_hypothesis
from .nodes import INPUT, OUTPUT, Compiled, reachable
from .score import SeedStats, TaskScore, recovered, recovered_metric
from .tree import (
    Sampler,
    TreePlan,
    TreeTooLarge,
    exact_nodes,
    interp_values,
    layout_groups,
    plan_tree,
    position_warnings,
    resolve_positions,
)

__all__ = ["Contribution", "Planned", "Scores", "ScrubResult", "Scrubber", "graph_data", "scrub_hypothesis"]

WAVE_LOGIT_BYTES = 512 * 2**20  # final-position logits of the runs evaluated together, at most


@dataclass
class Planned:
    """A compiled hypothesis's sampled trees: per layout group, its node positions and one plan per seed."""

    compiled: Compiled
    seeds: list[int]
    groups: list[tuple[dict[int, np.ndarray], list[TreePlan]]]

    @property
    def copies(self) -> int:
        """Copies of model nodes in the tree (the largest over token layouts)."""
        return max(len(plans[0].nodes) for _, plans in self.groups)


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
        n, logits = len(dataset), None
        with torch.inference_mode():  # layouts of one length share their forward passes
            self.clean = CleanRun.of_groups(model, [torch.tensor([dataset.examples[i].tokens for i in g.idx],
                                                                 device=dev) for g in self.groups])
            w_t = model.unembed.W_U.T.contiguous()  # once, not per layout
            for g, run in zip(self.groups, self.clean):
                lg = run.logits(torch.arange(len(g.idx), device=dev), w_t).cpu()
                logits = torch.empty(n, lg.shape[-1]) if logits is None else logits
                logits[torch.as_tensor(g.idx)] = lg
        self.logits_model = logits
        labels = torch.arange(n)
        self.loss_model, self.metric_model = self.score.score(logits, labels)
        self.loss_random, self.metric_random = np.empty(n), np.empty(n)
        for g in self.groups:
            self.loss_random[g.idx], self.metric_random[g.idx] = self.score.random(logits, g.idx)
        self.rows_run = 0  # distinct copy inputs computed so far (work done, for cost reports)
        self.rows_asked = 0  # copies x examples of the trees evaluated (what a per-copy executor computes)

    def plan(self, compiled: Compiled, seeds: Sequence[int]) -> Planned:
        """Sample the tree of `compiled` for every seed and layout group (draws seeded by (seed, group), so a
        plan is the same whatever else is evaluated with it). TreeTooLarge beyond max_tree_nodes copies."""
        values = interp_values(compiled, self.ds)
        groups = []
        for gi, g in enumerate(self.groups):
            positions = resolve_positions(compiled, g)
            exact = exact_nodes(compiled, positions, g.length) if self.shortcuts else set()
            plans = [plan_tree(compiled, Sampler(values, g.idx, np.random.default_rng([s, gi])), exact,
                               self.max_tree_nodes) for s in seeds]
            groups.append((positions, plans))
        return Planned(compiled, list(seeds), groups)

    def evaluate(self, items: Sequence[tuple[Planned, Mode]], progress: Progress | None = None,
                 should_cancel: Callable[[], bool] | None = None) -> list[Scores]:
        """Scores of several planned hypotheses, each under an ablation mode, over their seeds. Every run
        (item x seed) of a wave is evaluated together, per layout group, by one Executor (shared rows are
        computed once); waves bound the logits held at once."""
        runs = [(k, si) for k, (pl, _) in enumerate(items) for si in range(len(pl.seeds))]
        n, vocab = len(self.ds), self.logits_model.shape[-1]
        per_wave = max(1, WAVE_LOGIT_BYTES // (4 * n * vocab))
        waves = [runs[a:a + per_wave] for a in range(0, len(runs), per_wave)]
        losses: dict[tuple[int, int], np.ndarray] = {}
        metrics: dict[tuple[int, int], np.ndarray] = {}
        steps, done = len(waves) * len(self.groups), 0
        for wave in waves:
            out = {key: torch.empty_like(self.logits_model) for key in wave}
            for gi, g in enumerate(self.groups):
                sub = None if progress is None else (lambda f, m, d=done: progress((d + f) / steps, m))
                ex = Executor(self.model, self.clean[gi], self.shortcuts, should_cancel, sub)
                got = ex.run([Run(items[k][0].compiled, items[k][0].groups[gi][1][si], items[k][0].groups[gi][0],
                                  items[k][1]) for k, si in wave])
                for key, lg in zip(wave, got):
                    out[key][torch.as_tensor(g.idx)] = lg.cpu()
                self.rows_run += ex.rows_run
                self.rows_asked += ex.rows_asked
                done += 1
            for key in wave:
                losses[key], metrics[key] = self.score.score(out.pop(key), torch.arange(n))
        if progress is not None:
            progress(1.0, f"scrubbing: {len(runs)} runs done")
        return [self._scores(np.stack([losses[(k, si)] for si in range(len(pl.seeds))]),
                             np.stack([metrics[(k, si)] for si in range(len(pl.seeds))]))
                for k, (pl, _) in enumerate(items)]

    def scores(self, compiled: Compiled, mode: Mode, seeds: Sequence[int],
               should_cancel: Callable[[], bool] | None = None) -> Scores:
        """Loss, metric and both recovery scores of one hypothesis under one ablation mode, over seeds."""
        return self.evaluate([(self.plan(compiled, seeds), mode)], should_cancel=should_cancel)[0]

    def _scores(self, L: np.ndarray, M: np.ndarray) -> Scores:
        """Scores from per-seed, per-example loss and metric ([seeds, n] each)."""
        lm, lr = float(self.loss_model.mean()), float(self.loss_random.mean())
        mm, mr = float(self.metric_model.mean()), float(self.metric_random.mean())
        return Scores(SeedStats.of(L.mean(1)), SeedStats.of(M.mean(1)),
                      SeedStats.of([recovered(lr, l, lm) for l in L.mean(1)]),
                      SeedStats.of([recovered_metric(m, mr, mm) for m in M.mean(1)]), L.mean(0), M.mean(0))


def _drop(hyp: Hypothesis, name: str) -> Hypothesis:
    """`hyp` with node `name` removed from every parent list (copies only the lists it edits: a large hypothesis
    has one variant per node)."""
    def keep(ps: list[str]) -> list[str]:
        return [p for p in ps if p != name]

    nodes = [n.model_copy(update={  # an emptied list stays [] (nothing matters), not None (a leaf)
        "parents": None if n.parents is None else keep(n.parents),
        "inputs": None if n.inputs is None else {k: keep(v) for k, v in n.inputs.items()}}) for n in hyp.nodes]
    return hyp.model_copy(update={"name": f"{hyp.name} - {name}", "nodes": nodes,
                                  "output": hyp.output.model_copy(update={"parents": keep(hyp.output.parents)})})


def _sharpen(hyp: Hypothesis, name: str) -> Hypothesis:
    """`hyp` with node `name`'s interpretation node sharpened to the whole input."""
    nodes = [n.model_copy(update={"interp": INPUT}) if n.name == name else n for n in hyp.nodes]
    return hyp.model_copy(update={"name": f"{hyp.name} ~ {name}", "nodes": nodes})


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
    full = sc.plan(compiled, seeds)
    items: list[tuple[Planned, Mode]] = [(full, "resample")] + [(full, m) for m in ablations]
    variants, skipped = [], []
    for n in (compiled.nodes[:-1] if contributions else []):
        if n.name not in reach:
            continue
        try:  # a variant can treeify into far more copies (its nodes lose exactness): skip it then
            d = sc.plan(check_hypothesis(_drop(hyp, n.name), dataset.spec, model), seeds)
            s = (sc.plan(check_hypothesis(_sharpen(hyp, n.name), dataset.spec, model), seeds)
                 if n.interp != INPUT else None)
        except TreeTooLarge:
            skipped.append(n.name)
            continue
        variants.append((n, len(items), s is not None))
        items += [(d, "resample")] + ([(s, "resample")] if s is not None else [])
    # every seed, ablation and variant evaluated together: their shared rows are computed once
    got = sc.evaluate(items, progress, should_cancel)
    full_s, abl = got[0], dict(zip(ablations, got[1:1 + len(ablations)]))
    contribs, warnings = [], list(compiled.warnings)
    for node, k, sharpened in variants:
        d = got[k]
        c = Contribution(node.name, node.label, node.interp, d, full_s.recovered.mean - d.recovered.mean,
                         full_s.recovered_metric.mean - d.recovered_metric.mean)
        if sharpened:
            sh = got[k + 1]
            c.sharpened, c.sharpen_effect = sh, sh.recovered.mean - full_s.recovered.mean
            c.sharpen_effect_metric = sh.recovered_metric.mean - full_s.recovered_metric.mean
        contribs.append(c)
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
        float(sc.metric_model.mean()), float(sc.metric_random.mean()), full_s, abl, contribs,
        graph_data(compiled, contribs),
        {"copies": full.copies, "rows_run": sc.rows_run - rows0, "layouts": len(sc.groups)},
        stats, warnings, time.perf_counter() - t0,
        {"loss_model": sc.loss_model, "loss_random": sc.loss_random, "metric_model": sc.metric_model,
         "metric_random": sc.metric_random, "loss_scrubbed": full_s.per_example_loss,
         "metric_scrubbed": full_s.per_example_metric})


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
