"""Node circuits run as batched rows from the first differing token (core.circuit_runs) give what the hooked loop
(one full forward per circuit, every dropped node's x' value written by a hook) gives."""

import pytest
import torch

from mcp_interp.methods.attribution import faithfulness_curves, node_circuit_metrics, nodes_for
from mcp_interp.methods.core import LogitDiffMetric, Site
from mcp_interp.methods.core.circuit_runs import circuit_metrics, circuits_run_here

from ..tiny_models import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

V = 50
TOL = 1e-4


def _pairs(seed=0):
    """Pairs of three lengths whose first difference falls at token 0, in the middle, at the last token, or nowhere
    (an identical pair): every start the rows can have."""
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = [], []
    for T, first in [(7, 3), (7, 3), (7, 0), (10, 5), (10, 9), (10, None), (12, 2)]:
        c = torch.randint(0, V, (T,), generator=g)
        x = c.clone()
        if first is not None:
            x[first] = (c[first] + 1 + int(torch.randint(0, V - 1, (1,), generator=g))) % V
            x[first + 1:] = torch.where(torch.rand(T - first - 1, generator=g) < 0.5, x[first + 1:],
                                        torch.randint(0, V, (T - first - 1,), generator=g))
        clean.append(c), corrupt.append(x)
    ans = torch.randint(0, V, (len(clean),), generator=g)
    return clean, corrupt, LogitDiffMetric(ans, (ans + 1) % V)


def _keep(n_nodes, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(k, n_nodes, generator=g) < torch.linspace(0.05, 0.95, k)[:, None]
    keep[0] = False  # the empty circuit
    keep[1] = True  # the whole model: the clean run
    return keep


@pytest.mark.parametrize("kind", ["ln", "gqa", "gemma", "parallel"])
def test_circuits_equal_the_hooked_loop_per_example(kind):
    model = tiny_model(kind, V=V)
    clean, corrupt, metric = _pairs()
    nodes = nodes_for(model, "heads") + nodes_for(model, "mlps") + [Site("attn_out", 1)]
    keep = _keep(len(nodes), 12)
    assert circuits_run_here(model, nodes)
    m, m_x, m_c = circuit_metrics(model, nodes, keep, clean, corrupt, metric, max_rows=20)  # several chunks
    for i in range(len(clean)):  # the reference, one example at a time: per-example values, not only means
        one = LogitDiffMetric(metric.answer[i:i + 1], metric.cf_answer[i:i + 1])
        ref, rx, rc = node_circuit_metrics(model, nodes, keep, clean[i:i + 1], corrupt[i:i + 1], one, use_engine=False)
        assert (m[:, i] - ref).abs().max() <= TOL and abs(m_x[i] - rx) <= TOL and abs(m_c[i] - rc) <= TOL
    assert m.std(0).max() > 0.3  # circuits differ: the comparison is not vacuous
    assert torch.equal(m[1], m_x)  # keeping everything is the clean run
    assert torch.equal(m[:, 5], m_x[5].expand(len(keep)))  # a pair that never differs: nothing to patch
    # the mean path the curves call runs here and agrees
    mean, mx, mc = node_circuit_metrics(model, nodes, keep, clean, corrupt, metric)
    assert (mean - m.mean(1)).abs().max() <= 1e-6 and mx == pytest.approx(float(m_x.mean()))


def test_other_nodes_take_the_hooked_loop():
    model = tiny_model("gqa", V=V)
    clean, corrupt, metric = _pairs(1)
    assert not circuits_run_here(model, nodes_for(model, "neurons", 1))
    assert not circuits_run_here(model, nodes_for(model, "qkv"))
    assert not circuits_run_here(model, [Site("resid_pre", 1, position="A")])
    with pytest.raises(ValueError, match="hooked loop"):
        circuit_metrics(model, nodes_for(model, "neurons", 1), torch.ones(1, 64, dtype=torch.bool), clean, corrupt,
                        metric)
    nodes = nodes_for(model, "neurons", 1)
    keep = _keep(len(nodes), 4)
    m, mx, _ = node_circuit_metrics(model, nodes, keep, clean, corrupt, metric)  # falls back, still right
    assert m[1] == pytest.approx(mx, abs=1e-5)


def test_curves_run_each_distinct_circuit_once():
    seen = []

    def evaluate(keep):
        seen.append(keep)
        return keep.float().sum(1), 12.0, 0.0

    scores = torch.tensor([5.0, -4, 3, -2, 1, 0, 0, 0, 0, 0, 0, 0])
    curves = faithfulness_curves(evaluate, scores)
    asked = 2 * len(curves["signed"].counts) + 1
    assert len(seen) == 1 and len(seen[0]) == len(torch.unique(seen[0], dim=0)) < asked
    for c in curves.values():  # every circuit still gets its own value: f = k / 12 for a metric counting units
        assert c.faithfulness == pytest.approx([k / 12 for k in c.counts])


def test_circuits_reuse_exact_patchings_cached_runs():
    from mcp_interp.methods.attribution import node_scores
    from mcp_interp.methods.patching import ActivationCache
    model = tiny_model("gqa", V=V)
    clean, corrupt, metric = _pairs(2)
    nodes = nodes_for(model, "heads") + nodes_for(model, "mlps")
    keep = _keep(len(nodes), 5)
    cache = ActivationCache()
    node_scores(model, "exact", nodes, clean, corrupt, metric, act_cache=cache)  # denoising: base x', source x
    misses = cache.misses
    shared = circuit_metrics(model, nodes, keep, clean, corrupt, metric, act_cache=cache)  # base x, source x'
    assert cache.misses == misses and cache.hits == misses  # every length bucket found, base and source exchanged
    alone = circuit_metrics(model, nodes, keep, clean, corrupt, metric)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(shared, alone))
