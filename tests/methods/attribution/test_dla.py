"""Direct logit attribution on known answers: the decomposition identity on LayerNorm, RMSNorm, grouped-query,
post-normed and parallel blocks; TransformerLens' own logit attribution; the planted switch (a head acting only
directly equals exact patching, the selector acting through it scores 0) and the planted clean model's MLPs."""

import pytest
import torch

from mcp_interp.evaluation.ground_truth import planted_case
from mcp_interp.methods.attribution import direct_logit_attribution, node_scores, nodes_for, run_attribution
from mcp_interp.methods.attribution.dla import REST
from mcp_interp.methods.core import LogitDiffMetric, ProbMetric

from ..tiny_models import tiny_model
from .test_atp_star import switch_case


def random_pairs(V: int = 50, n: int = 5, T: int = 7, seed: int = 1):
    """n random prompts of T tokens, their counterfactuals (token 2 changed) and a logit difference metric."""
    g = torch.Generator().manual_seed(seed)
    clean = [torch.randint(0, V, (T,), generator=g) for _ in range(n)]
    corrupt = [c.clone() for c in clean]
    for c in corrupt:
        c[2] = (c[2] + 1) % V
    metric = LogitDiffMetric(torch.randint(0, V, (n,), generator=g), torch.randint(0, V, (n,), generator=g))
    return clean, corrupt, metric, {"A": torch.full((n,), 2), "B": torch.full((n,), 4)}


@pytest.mark.parametrize("kind", ["ln", "gqa", "gemma", "olmo2", "parallel", "shortformer"])
@pytest.mark.parametrize("level", ["heads", "mlps", "neurons"])
def test_direct_terms_add_up_to_the_metric(kind, level):
    """Every unit's DLA plus the embeddings', the biases' and the other level's direct terms is the logit difference
    the model computes (final norm scale frozen from the run), on x and on x'; a head's split over source positions
    adds up to the head. Gemma-style blocks (norms after each sublayer) use the heads' shares of the normalised
    output; the tiny Gemma's output soft cap is switched off here (with it the terms add up to the pre-cap
    difference, next test). Norm weights and every bias but the post-normed blocks' b_O are randomised."""
    model = tiny_model(kind)
    model.cfg.output_logits_soft_cap = -1.0
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # norm weights and biases away from 1 / 0, so dropping w_ln or a bias would show
        for name, p in model.named_parameters():
            if p.ndim == 1 and not (name.endswith("attn.b_O") and kind in ("gemma", "olmo2")):
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    clean, corrupt, metric, pos = random_pairs()
    nodes = nodes_for(model, level, layer=1)
    da = direct_logit_attribution(model, nodes, clean, corrupt, metric, pos, batch_size=3)
    for units, other, m in ((da.clean, da.other_clean, da.m_clean), (da.corrupt, da.other_corrupt, da.m_corrupt)):
        total = units.sum(1) + torch.stack(list(other.values()), 1).sum(1)
        assert torch.allclose(total, m, atol=1e-4), (total, m)
        assert float(m.abs().max()) > 1.0  # a real signal, not 0 = 0
    assert da.identity_error() < 1e-4
    assert "biases" in da.other_clean and "embed" in da.other_clean
    assert ("pos_embed" in da.other_clean) == (kind == "ln")  # shortformer positions never enter the stream
    if level == "heads":
        assert da.source_names == ["A", "B", REST]
        assert torch.allclose(da.sources_clean.sum(-1), da.clean, atol=1e-4)
        assert torch.allclose(da.sources_corrupt.sum(-1), da.corrupt, atol=1e-4)
    else:
        assert da.sources_clean is None
    assert torch.equal(da.effect, da.clean - da.corrupt)


def test_source_split_counts_each_token_once():
    """A name missing from a prompt (index -1) gets 0, not the last token's share; a token named twice counts for its
    first name only: the split still adds up to the head, and each name equals the head's term at its token."""
    model = tiny_model("ln")
    clean, corrupt, metric, _ = random_pairs()
    n = len(clean)
    plain = direct_logit_attribution(model, nodes_for(model, "heads"), clean, corrupt, metric,
                                     {"A": torch.full((n,), 2), "END": torch.full((n,), 6)})
    pos = {"A": torch.full((n,), 2), "A again": torch.full((n,), 2), "missing": torch.full((n,), -1),
           "END": torch.full((n,), 6)}
    da = direct_logit_attribution(model, nodes_for(model, "heads"), clean, corrupt, metric, pos)
    assert da.source_names == ["A", "A again", "missing", "END", REST]
    assert torch.allclose(da.sources_clean.sum(-1), da.clean, atol=1e-5)
    assert float(da.sources_clean[..., 1:3].abs().max()) == 0.0
    assert float(plain.sources_clean[..., 1].abs().max()) > 1e-3  # END carries a real share
    for j, k in ((0, 0), (3, 1), (4, 2)):
        assert torch.allclose(da.sources_clean[..., j], plain.sources_clean[..., k], atol=1e-6)


def test_a_soft_capped_model_adds_up_before_the_cap():
    model = tiny_model("gemma")  # output soft cap 3
    clean, corrupt, metric, pos = random_pairs()
    da = direct_logit_attribution(model, nodes_for(model, "heads"), clean, corrupt, metric, pos)
    assert da.capped and da.identity_error() < 1e-4
    assert float((da.logit_diff_clean - da.m_clean).abs().max()) > 0.1  # the cap bends the metric
    cap = 3.0
    logits = model(torch.stack(clean))[:, -1]
    raw = torch.atanh(logits / cap) * cap  # undo the cap on each logit
    rows = torch.arange(len(clean))
    pre = raw[rows, metric.answer] - raw[rows, metric.cf_answer]
    assert torch.allclose(da.logit_diff_clean, pre.float(), atol=1e-3)


@pytest.mark.parametrize("kind", ["ln", "gqa"])
def test_head_dla_equals_transformer_lens_logit_attrs(kind):
    """TransformerLens' own direct logit attribution (logit_attrs of answer vs counterfactual answer: the cached final
    norm scale, then the unembedding directions) gives the same per-head and per-MLP numbers. (TL's assumes the final
    norm's weight folded into W_U; the tiny models' is 1, so both read the same directions.)"""
    model = tiny_model(kind)
    clean, corrupt, metric, pos = random_pairs()
    da = direct_logit_attribution(model, nodes_for(model, "heads"), clean, corrupt, metric, pos)
    _, cache = model.run_with_cache(torch.stack(clean))
    stack = cache.stack_head_results(layer=-1, pos_slice=-1)  # [L*H, n, d_model]; logit_attrs applies ln_final
    tl = cache.logit_attrs(stack, metric.answer, metric.cf_answer, pos_slice=-1)  # [L*H, n]
    assert torch.allclose(da.clean, tl.T, atol=1e-4)
    mlps = cache.decompose_resid(mode="mlp", pos_slice=-1, incl_embeds=False)
    dm = direct_logit_attribution(model, nodes_for(model, "mlps"), clean, corrupt, metric)
    assert torch.allclose(dm.clean, cache.logit_attrs(mlps, metric.answer, metric.cf_answer, pos_slice=-1).T,
                          atol=1e-4)


def test_planted_switch_reader_is_direct_selector_is_not():
    """toy/planted-switch, flip_s: the reader L2H0 writes the answer straight to the logits, so its DLA score equals
    its exact patching score (1); the selector L0H0 has exact effect 1 but writes nothing the unembedding reads
    (DLA 0): it acts through the reader's attention. Raw DLA of the reader: +L = 6 logits on every clean input, all
    of it through the source position it attends to (U when s = p, W when s = q)."""
    model, clean, corrupt, metric = switch_case(8)
    from mcp_interp.tasks.dataset import build_dataset
    from mcp_interp.tasks.spec import TaskSpec
    from mcp_interp.toymodels.planted_switch import L_LOGIT, PLANTED_SWITCH_TASK, build_planted_switch

    _, tok = build_planted_switch()
    ds = build_dataset(TaskSpec.model_validate(PLANTED_SWITCH_TASK), tok, 8, 0, "flip_s")
    positions = {p: torch.tensor([e.positions[p] for e in ds.examples]) for p in ds.position_names}
    rep = run_attribution(model, "dla", "heads", clean, corrupt, metric, positions, compare_exact=True)
    score = dict(zip(rep.units, rep.scores.tolist()))
    exact = rep.comparison["exact_scores"]
    assert score["L2H0"] == pytest.approx(exact["L2H0"], abs=1e-3) and exact["L2H0"] == pytest.approx(1.0, abs=1e-3)
    assert exact["L0H0"] == pytest.approx(1.0, abs=1e-3) and abs(score["L0H0"]) < 1e-3
    reader = rep.units.index("L2H0")
    assert rep.direct.mean[reader] == pytest.approx(L_LOGIT, abs=1e-3)
    assert rep.direct.lo[reader] <= rep.direct.mean[reader] <= rep.direct.hi[reader]
    da = rep.dla
    names = da.source_names
    assert names[-1] == REST and set(names[:-1]) == set(ds.position_names)
    for i, e in enumerate(ds.examples):
        src = da.sources_clean[i, reader]
        slot = "U" if e.prompt[0] == "p" else "W"  # s is the first character
        assert float(src[names.index(slot)]) == pytest.approx(L_LOGIT, abs=1e-3), (e.prompt, src)
        assert float(src.abs().sum() - src[names.index(slot)].abs()) < 1e-3
    assert rep.direct.identity_error < 1e-4 and rep.tensors()["direct_sources.clean"].shape == (8, 6, len(names))


def test_planted_clean_mlps_and_neurons():
    """toy/planted-clean: MLP1 maps the moved letter to the answer logits (DLA score 1, exact 1; raw DLA = the whole
    clean logit difference), MLP0 is inert (0). MLP1's neurons add up to MLP1 once its output bias is counted."""
    model, clean, corrupt, metric, meta = planted_case("clean", 0, n=8)
    rep = run_attribution(model, "dla", "mlps", clean, corrupt, metric, compare_exact=True, faithfulness=False)
    score = dict(zip(rep.units, rep.scores.tolist()))
    assert score["MLP1"] == pytest.approx(1.0, abs=1e-3) and abs(score["MLP0"]) < 1e-3
    assert rep.comparison["exact_scores"]["MLP1"] == pytest.approx(score["MLP1"], abs=1e-3)
    assert rep.direct.mean[1] == pytest.approx(float(rep.m_clean.mean()), abs=1e-3)
    mlp = node_scores(model, "dla", nodes_for(model, "mlps"), clean, corrupt, metric).extra["dla"]
    neu = node_scores(model, "dla", nodes_for(model, "neurons", layer=1), clean, corrupt, metric).extra["dla"]
    assert torch.allclose(neu.clean.sum(1) + (neu.other_clean["biases"] - mlp.other_clean["biases"]), mlp.clean[:, 1],
                          atol=1e-4)


def test_dla_refuses_positions_and_nonlinear_metrics():
    model, clean, corrupt, metric = switch_case(4)
    with pytest.raises(ValueError, match="positions have no direct effect"):
        node_scores(model, "dla", nodes_for(model, "positions", 0, ["S"]), clean, corrupt, metric,
                    positions={"S": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(ValueError, match="logit_diff"):
        node_scores(model, "dla", nodes_for(model, "heads"), clean, corrupt, ProbMetric(metric.answer))
