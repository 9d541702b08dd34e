"""AtP* against exact patching: the QK fix on a head behind a saturated softmax, the scale, q/k/v input nodes."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mcp_interp.evaluation.ground_truth import planted_case
from mcp_interp.methods.attribution import node_hooks, node_scores, nodes_for, pair_chunks, split_inputs
from mcp_interp.methods.attribution.atp_star import atp_star_chunk
from mcp_interp.methods.core import LogitDiffMetric
from mcp_interp.tasks.dataset import build_dataset
from mcp_interp.tasks.spec import TaskSpec
from mcp_interp.toymodels.planted_switch import PLANTED_SWITCH_TASK, build_planted_switch, planted_switch_meta


def switch_case(n: int = 8):
    model, tok = build_planted_switch()
    ds = build_dataset(TaskSpec.model_validate(PLANTED_SWITCH_TASK), tok, n, 0, "flip_s")
    clean = [torch.tensor(e.tokens) for e in ds.examples]
    corrupt = [torch.tensor(e.cf_tokens) for e in ds.examples]
    metric = LogitDiffMetric(torch.tensor([e.answer_id for e in ds.examples]),
                             torch.tensor([e.cf_answer_id for e in ds.examples]))
    return model, clean, corrupt, metric


@pytest.mark.parametrize("level", ["heads", "qkv"])
def test_atp_star_agrees_with_exact_behind_a_saturated_softmax(level):
    """toy/planted-switch: the selector head L0H0 (and the reader's query input L2H0.q) flip a saturated attention
    pattern. Exact patching gives 1, plain AtP ~0 (the gradient through the saturated softmax vanishes); AtP*
    recomputes the pattern and matches exact patching on every unit. The reader L2H0 sits in the last of 3
    layers: the old GradDrop average scored it 1.5."""
    model, clean, corrupt, metric = switch_case()
    meta = planted_switch_meta()
    nodes = nodes_for(model, level)
    names = [n.name for n in nodes]
    truth = meta["exact_effects"] if level == "heads" else meta["exact_input_effects"]
    ex = node_scores(model, "exact", nodes, clean, corrupt, metric).normalised
    atp = node_scores(model, "atp", nodes, clean, corrupt, metric).normalised
    star = node_scores(model, "atp_star", nodes, clean, corrupt, metric)
    assert torch.allclose(ex, torch.tensor([truth[u] for u in names]), atol=1e-4)
    key = "L0H0" if level == "heads" else "L2H0.q"
    assert abs(float(atp[names.index(key)])) < 0.01  # the false negative AtP* exists to fix
    assert torch.allclose(star.normalised, ex, atol=1e-3), dict(zip(names, star.normalised.tolist()))
    assert star.extra["attention_forwards"] > 0


def test_atp_star_shares_exact_patchings_scale():
    """Where nothing nonlinear follows a unit (MLP1 of the planted clean model feeds the logits linearly), AtP* =
    AtP = exact patching. The GradDrop average of Kramar et al. divided by L - 1 gave 2.0 here."""
    model, clean, corrupt, metric, meta = planted_case("clean", 3, n=8)
    nodes = nodes_for(model, "heads") + nodes_for(model, "mlps")
    ex = node_scores(model, "exact", nodes, clean, corrupt, metric).normalised
    star = node_scores(model, "atp_star", nodes, clean, corrupt, metric).normalised
    mlp1 = [n.name for n in nodes].index("MLP1")
    assert float(ex[mlp1]) == pytest.approx(1.0, abs=1e-3)
    assert float(star[mlp1]) == pytest.approx(float(ex[mlp1]), abs=1e-4)
    assert torch.allclose(star, ex, atol=1e-3)


@pytest.mark.parametrize("kind", ["rope_gqa", "gemma", "olmo2", "shortformer"])
def test_atp_star_reduces_to_atp_for_small_patches(kind):
    """The QK fix replaces the linear estimate of the same paths, so for a patch scaled by eps it differs from AtP
    by O(eps^2): (AtP*(eps delta) / eps) -> AtP(delta). Checked on random models with RMSNorm, rotary,
    grouped-query attention and gated MLPs, for head outputs, MLPs, neurons and q/k/v inputs; and on blocks that
    normalise their outputs before the residual add (Gemma 2/3: norms before and after; OLMo 2: after only),
    where a unit's write is its sublayer's normalised output recomputed and the linear term runs through the
    norm's Jacobian — with raw z @ W_O writes the error stays O(1) there; and shortformer positions (added to the
    recomputed queries and keys, as the induction toys' blocks do)."""
    torch.manual_seed(0)
    if kind == "rope_gqa":
        cfg = HookedTransformerConfig(n_layers=3, d_model=32, n_heads=4, d_head=8, n_key_value_heads=2, d_mlp=64,
                                      d_vocab=20, n_ctx=16, act_fn="silu", gated_mlp=True, normalization_type="RMS",
                                      positional_embedding_type="rotary", device="cpu")
        model = HookedTransformer(cfg)
    else:
        from ..tiny_models import tiny_model

        model = tiny_model(kind, V=20)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    clean = [torch.randint(0, 20, (7,)) for _ in range(4)]
    corrupt = [c.clone() for c in clean]
    for c in corrupt:
        c[2], c[5] = (c[2] + 3) % 20, (c[5] + 1) % 20
    metric = LogitDiffMetric(torch.tensor([1] * 4), torch.tensor([2] * 4))
    nodes = (nodes_for(model, "heads") + nodes_for(model, "mlps") + nodes_for(model, "qkv")
             + nodes_for(model, "neurons", layer=0)[:4])
    atp = node_scores(model, "atp", nodes, clean, corrupt, metric).per_example
    names = node_hooks(nodes)
    errs = []
    with split_inputs(model):
        pc = next(pair_chunks(model, clean, corrupt, metric, names, 8))
        for eps in (1e-2, 1e-3):
            delta = {k: eps * (pc.cache_x[k] - pc.cache_c[k]) for k in names}
            src = {k: pc.cache_c[k] + delta[k] for k in names}
            _, info = atp_star_chunk(model, pc.xc, pc.idx, nodes, metric, delta, src)
            errs.append(float((info["plain"] / eps - atp[pc.idx]).abs().max()))
    assert atp.abs().max() > 0.1
    assert errs[0] < 0.02 * max(1.0, float(atp.abs().max())) and errs[1] < errs[0] / 5  # shrinks linearly with eps
