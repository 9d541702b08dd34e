"""run_baseline through MCP: the verdict names the accuracy it judges by."""

import pytest
from mcp import Client
from mcp_helpers import call, finish

from mcp_interp.server.app import build_server

pytestmark = pytest.mark.anyio



async def test_verdict_names_pairwise_accuracy_and_quotes_top1(store_dir):
    """A logit_diff task is judged by pairwise accuracy (answer vs counterfactual answer); the verdict must say so
    and quote top-1 accuracy beside it, since the two can differ widely (a random model: pairwise ~0.5, top-1 ~0)."""
    async with Client(build_server(store_dir)) as c:
        out = await finish(c, await call(c, "run_baseline", {"model": "toy/tiny-random", "task": "induction", "n": 16,
                                                             "wait_seconds": 120}))
    v = out["verdict"]
    pair, top1 = out["metrics"]["pairwise_accuracy"]["mean"], out["metrics"]["accuracy"]["mean"]
    assert out["primary_accuracy"]["mean"] == pytest.approx(pair)
    assert f"pairwise accuracy (the answer's logit beats the counterfactual answer's) {pair:.2f}" in v
    assert f"top-1 accuracy {top1:.2f}" in v
