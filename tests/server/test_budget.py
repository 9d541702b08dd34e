"""Heavy tools estimate their peak memory from the arguments and the model before any work, and refuse a request
over the per-request budget with a field error naming the largest value that fits (issue 26 item 2)."""

from __future__ import annotations

import re

import pytest
from mcp import Client
from mcp_helpers import call, call_error

from mcp_interp.methods.core.footprint import BUDGET_ENV, Footprint, largest_fitting, over_budget
from mcp_interp.server.app import build_server

pytestmark = pytest.mark.anyio
FEATS = "toy/planted-features"
SAE = {"model": FEATS, "site": "resid_pre", "layer": 1, "corpus": "random", "tokens": 2000, "context": 8,
       "d_sae": 32, "epochs": 1}


def test_the_largest_fitting_value_is_exact_and_the_most_oversized_argument_is_named():
    fp = Footprint(lambda a, b: 10 * a * b + 100, {"a": 1000, "b": 3})
    assert over_budget(fp, 10**9) is None
    fits = largest_fitting(fp, "a", 10_000)
    assert fp.total(a=fits) <= 10_000 < fp.total(a=fits + 1)
    assert over_budget(fp, 10_000) == ("a", fits)  # a is 3x over, b can shrink only to 0: a is named
    assert over_budget(Footprint(lambda a: 10**12, {"a": 5}), 100) == ("a", None)


async def test_oversized_requests_are_refused_with_the_value_that_fits(store_dir, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "256")
    async with Client(build_server(store_dir)) as c:
        err = await call_error(c, "train_sae", {**SAE, "d_sae": 2_000_000})
        fits = int(re.search(r"d_sae at most (\d+)", err)[1])
        assert err.count("\n") == 0 and "d_sae=2000000 needs about" in err and 1000 < fits < 2_000_000
        assert "failed unexpectedly" not in (await call_error(c, "train_sae", {**SAE, "d_sae": 10**9}))
        assert "tokens at most" in await call_error(c, "train_sae", {**SAE, "tokens": 50_000_000})
        # the value it names does fit: the same request at that size is not refused for memory
        ok = await c.call_tool("train_sae", {**SAE, "d_sae": fits, "tokens": 64, "wait_seconds": 0})
        assert not ok.is_error or "at most" not in ok.content[0].text
        cmp = {"a": {"model": FEATS, "source": "neurons", "layer": 1}, "b": {"model": FEATS, "source": "resid",
               "layer": "0:2"}, "corpus": "random", "tokens": 8192, "n_null": 1, "n_perm": 19}
        assert re.search(r"compare_features: tokens: comparing 1 x 2 layers with tokens=8192 needs about .* Fix: "
                         r"tokens at most \d+",
                         await call_error(c, "compare_features", cmp))
        monkeypatch.setenv(BUDGET_ENV, "100000")
        assert (await call(c, "train_sae", {**SAE, "wait_seconds": 120}))["status"] == "complete"


async def test_patching_tools_check_their_cached_runs(store_dir, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "0.5")
    async with Client(build_server(store_dir)) as c:
        for tool in ("run_baseline", "locate", "attribute"):
            err = await call_error(c, tool, {"model": "toy/tiny-random", "task": "induction", "n": 512})
            assert re.search(r": n: caching every layer's activations .* n=512 needs .* Fix: n at most \d+", err), err


async def test_load_sae_measures_within_the_budget(store_dir, monkeypatch):
    async with Client(build_server(store_dir)) as c:
        sae = (await call(c, "train_sae", {**SAE, "splice_windows": 0, "wait_seconds": 120}))["result"]
        monkeypatch.setenv(BUDGET_ENV, "0.3")
        err = await call_error(c, "load_sae", {"model": FEATS, "path": sae["sae_path"], "task": "planted-features",
                                               "n": 2048})
        assert re.search(r"load_sae: n: measuring the SAE .* n=2048 needs .* Fix: n at most \d+", err), err
