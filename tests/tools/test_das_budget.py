"""train_das and eval_das estimate their peak memory (the cached runs of every interchange pair, a training batch,
the rotation and its optimiser state) before any training or caching, and refuse a request over the per-request
budget with a field error naming the largest value that fits (issue 26 item 2)."""

from __future__ import annotations

import re

import pytest
from mcp import Client
from mcp_helpers import call, call_error

from mcp_interp.methods.core.footprint import BUDGET_ENV
from mcp_interp.methods.das import Site, das_footprint
from mcp_interp.models.toy import build_toy, get_toy
from mcp_interp.server.app import build_server

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("one_thread")]
MODEL = "toy/planted-direction"
DAS = {"model": MODEL, "task": "planted-direction", "variable": "g", "layer": 1, "k": 1, "n_train": 32, "n_test": 16,
       "epochs": 1}


def test_the_estimate_grows_with_every_argument():
    cfg = build_toy(get_toy(MODEL))[0].cfg
    site = Site("resid_pre", 1)
    base = das_footprint(cfg, site, 32, 16, 8, 1, 32)
    assert 0 < base < das_footprint(cfg, site, 64, 16, 8, 1, 32)
    assert base < das_footprint(cfg, site, 32, 32, 8, 1, 32)
    assert das_footprint(cfg, site, 128, 16, 8, 1, 32) < das_footprint(cfg, site, 128, 16, 8, 1, 64)
    assert base == das_footprint(cfg, site, 32, 16, 8, 1, 64)  # a batch holds at most n_train rows
    assert base < das_footprint(cfg, site, 32, 16, 16, 1, 32) and base < das_footprint(cfg, site, 32, 16, 8, 4, 32)
    assert das_footprint(cfg, site, 0, 16, 8, 1) < base  # evaluation only: no training batch or optimiser state


async def test_oversized_das_requests_are_refused_before_any_work(store_dir, monkeypatch):
    async with Client(build_server(store_dir)) as c:
        trained = await call(c, "train_das", {**DAS, "wait_seconds": 300})
        assert trained["status"] == "complete"
        monkeypatch.setenv(BUDGET_ENV, "16")
        err = await call_error(c, "train_das", {**DAS, "n_train": 8192})
        assert err.count("\n") == 0
        fits = int(re.search(r"n_train at most (\d+)", err)[1])
        assert re.search(r"n_train: training DAS at blocks\.1\.hook_resid_pre .*n_train=8192 needs about", err), err
        assert 32 <= fits < 8192
        err = await call_error(c, "eval_das", {"run_id": trained["result"]["run_id"], "n": 8192})
        assert re.search(r"n: evaluating DAS at blocks\.1\.hook_resid_pre .*n=8192 needs about "
                         r".*n at most \d+", err), err
        # the requests that fit are not refused for memory
        ok = await call(c, "eval_das", {"run_id": trained["result"]["run_id"], "n": 16, "wait_seconds": 300})
        assert ok["status"] == "complete"
