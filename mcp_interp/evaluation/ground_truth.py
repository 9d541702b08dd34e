"""Attribution methods graded against planted circuits: AUROC per method, regime and seed.

For each regime and seed, `toy/planted-<regime>` is rebuilt with that seed (roles on permuted heads,
fresh inert weights) and a fresh dataset; every node method scores the ten components (heads and
MLPs) and every edge method scores the edges. A unit's score is |normalised score| (a component that
matters in either direction is important); the positives are `meta["important"]` /
`meta["important_edges"]`. The null row grades exact patching against labels shuffled within each
seed, so it shows what an uninformative ranking gets on these unit counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..methods.attribution import EDGE_METHODS, NODE_METHODS, edge_scores, node_scores, nodes_for
from ..methods.core import LogitDiffMetric, auroc
from ..tasks.dataset import build_dataset
from ..tasks.spec import TaskSpec
from ..toymodels.planted import PLANTED_REGIMES, PLANTED_TASK, build_planted, planted_meta

NULL_ROW = "null (exact, scrambled labels)"


def planted_case(regime: str, seed: int, n: int = 16):
    """`toy/planted-<regime>` built with `seed` and n clean / counterfactual pairs of the planted task.

    Returns (model, clean [n x [pos]] tokens, corrupt [n x [pos]], LogitDiffMetric of answer vs counterfactual
    answer, meta with the ground truth: "important" unit names, "important_edges" edge names)."""
    model, tok = build_planted(regime, seed)
    ds = build_dataset(TaskSpec.model_validate(PLANTED_TASK), tok, n, seed, "resample_x")
    clean = [torch.tensor(e.tokens) for e in ds.examples]
    corrupt = [torch.tensor(e.cf_tokens) for e in ds.examples]
    metric = LogitDiffMetric(torch.tensor([e.answer_id for e in ds.examples]),
                             torch.tensor([e.cf_answer_id for e in ds.examples]))
    return model, clean, corrupt, metric, planted_meta(regime, seed)


def auroc_table(seeds: Sequence[int] = range(8), regimes: Sequence[str] = PLANTED_REGIMES, n: int = 16,
                node_methods: Sequence[str] = NODE_METHODS, edge_methods: Sequence[str] = EDGE_METHODS,
                progress=None) -> dict[str, dict[str, list[float]]]:
    """{method: {regime: [AUROC per seed]}}; edge methods are keyed `edges:<method>`."""
    table: dict[str, dict[str, list[float]]] = {}
    total, done = len(regimes) * len(seeds), 0
    for regime in regimes:
        for seed in seeds:
            model, clean, corrupt, metric, meta = planted_case(regime, seed, n)
            nodes = nodes_for(model, "heads") + nodes_for(model, "mlps")
            labels = np.array([nd.name in meta["important"] for nd in nodes])
            for m in node_methods:
                s = node_scores(model, m, nodes, clean, corrupt, metric).normalised.abs().numpy()
                table.setdefault(m, {}).setdefault(regime, []).append(auroc(s, labels))
                if m == "exact":
                    rng = np.random.default_rng(1000 + seed)
                    table.setdefault(NULL_ROW, {}).setdefault(regime, []).append(auroc(s, rng.permutation(labels)))
            for m in edge_methods:
                r = edge_scores(model, m, clean, corrupt, metric)
                elabels = np.array([e in set(meta["important_edges"]) for e in r.edge_names()])
                table.setdefault(f"edges:{m}", {}).setdefault(regime, []).append(auroc(r.flat().abs().numpy(), elabels))
            done += 1
            if progress:
                progress(done / total, f"{regime} seed {seed}")
    return table


def format_table(table: dict[str, dict[str, list[float]]], regimes: Sequence[str] = PLANTED_REGIMES) -> str:
    """Markdown: mean AUROC (sd over seeds) per method and regime."""
    head = "| method | " + " | ".join(regimes) + " |\n|---|" + "---|" * len(regimes) + "\n"
    rows = []
    for m, per in table.items():
        cells = []
        for r in regimes:
            v = np.asarray(per.get(r, []), float)
            cells.append(f"{v.mean():.2f} ± {v.std():.2f}" if len(v) else "–")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows)
