"""trace through a real MCP client on the planted trace (toy/planted-trace), its hand-set transcoders saved as sae-lens
directories: the planted path is the top path, completeness and replacement are 1, the decoy is pruned away, the
graph JSON follows circuit-tracer's schema, the adjacency loads with the graph's shape, and the intervention check
matches the graph's predictions where the paths are linear (and shows where zero-ablation leaves them); the HTML
view in a real headless browser; refusals that name the field before any work."""

from __future__ import annotations

import json
import math
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp_helpers import call, call_error, png_of
from pydantic import BaseModel, ConfigDict

from mcp_interp.server.app import build_server
from mcp_interp.toymodels.common import TOY_ALPHABET
from mcp_interp.toymodels.planted_trace import (
    ANSWERS,
    L_LOGIT,
    LETTERS,
    SCORE,
    SKIP,
    THETA,
    X_POS,
    planted_trace_meta,
    planted_trace_transcoders,
)

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL, TASK = "toy/planted-trace", "planted-trace"
N_LAYERS, D_VOCAB = 2, 52
CHROMIUM = Path("/usr/bin/chromium")


# ------------------------------------------------------------------ circuit-tracer's graph schema (graph_models.py)

class Metadata(BaseModel):
    slug: str
    scan: str
    transcoder_list: list[str]
    prompt_tokens: list[str]
    prompt: str
    node_threshold: float | None = None
    schema_version: int | None = 1


class QParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pinnedIds: list[str]
    supernodes: list[list[str]]
    linkType: str
    clickedId: str
    sg_pos: str


class Node(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node_id: str
    feature: int
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    run_idx: int = 0
    reverse_ctx_idx: int = 0
    jsNodeId: str
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None


class Link(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str
    target: str
    weight: float


class GraphFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: Metadata
    qParams: QParams
    nodes: list[Node]
    links: list[Link]


# ------------------------------------------------------------------ one server, the calls the tests read

def save_planted(root: Path, layers=(0, 1), hook: str | None = None) -> Path:
    """The toy's hand-set transcoders as sae-lens directories L0, L1 under `root` (hook: another hook name)."""
    root.mkdir(parents=True, exist_ok=True)
    for layer, tc in planted_trace_transcoders().items():
        if layer in layers:
            if hook is not None:
                tc.cfg.metadata.hook_name = hook.format(layer=layer)
            tc.save_model(root / f"L{layer}")
    return root


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """The tool's answers (structured content, and whether an image came back) for the calls below, one server."""
    base = tmp_path_factory.mktemp("trace")
    tcs = str(save_planted(base / "tcs"))
    calls = {
        "task": {"model": MODEL, "task": TASK, "example": 0, "transcoders": tcs, "intervention_factor": 0.5,
                 "contexts_corpus": "task"},
        "ablate": {"model": MODEL, "task": TASK, "example": 0, "transcoders": tcs, "contexts_corpus": "none"},
        "prompt": {"model": MODEL, "prompt": "2c1=", "target": "r", "transcoders": [f"{tcs}/L0", f"{tcs}/L1"],
                   "contexts_corpus": "prompt"},
    }

    async def run():
        out = {}
        async with Client(build_server(base / "store")) as c:
            for name, args in calls.items():
                res = await c.call_tool("trace", {**args, "wait_seconds": 120})
                assert not res.is_error, res.content[0].text
                assert res.structured_content["status"] == "complete"
                out[name] = (res.structured_content["result"], png_of(res) is not None)
        return out

    return anyio.run(run)


def run_dir(result: dict) -> Path:
    return Path(result["html_path"]).parent


def expected_ids(prompt: str, d_vocab_target: int) -> tuple[list[str], str]:
    """The planted path's node ids (token, f0, f1, logit) and the decoy's, from the toy's ground truth."""
    meta = planted_trace_meta(0)
    x, T = prompt[X_POS], len(prompt)
    steps = meta["path"][x]
    tok = f"E_{TOY_ALPHABET.index(x)}_{X_POS}"
    path = [tok, f"0_{steps[1]['latent']}_{X_POS}", f"1_{steps[2]['latent']}_{T - 1}",
            f"{N_LAYERS + 1}_{d_vocab_target}_{T - 1}"]
    return path, f"1_{meta['decoys'][x]['latent']}_{T - 1}"


def test_the_planted_path_is_the_top_path_complete_and_the_decoy_pruned(traced):
    r, image = traced["task"]
    assert image  # the main figure came back as an image
    prompt = r["prompt"]
    path, decoy = expected_ids(prompt, D_VOCAB)  # a logit difference is numbered d_vocab + its index
    assert r["paths"][0]["nodes"] == path
    assert r["paths"][0]["score"] == pytest.approx(1 / (1 + SKIP), abs=1e-4)  # the skip route carries the rest
    assert r["completeness_score"] == pytest.approx(1.0, abs=1e-5)
    assert r["replacement_score"] == pytest.approx(1.0, abs=1e-5)
    assert r["identity_error"] < 1e-5
    x = prompt[X_POS]
    answer = ANSWERS[LETTERS.index(x)]
    t = r["targets"][0]
    assert t["label"].startswith(repr(answer)) and t["counterfactual"] is not None
    p = math.exp(SCORE) / (math.exp(SCORE) + len(prompt) - 1)
    assert t["value"] == pytest.approx(L_LOGIT * (p * (1 + SKIP) - THETA), abs=1e-4)  # a logit difference
    # the decoy fires (it is a node of the full graph) but nothing of it survives pruning
    files = run_dir(r)
    trace_json = json.loads((files / "trace.json").read_text())
    assert decoy in trace_json["node_ids"]
    graph = json.loads((files / "graph.json").read_text())
    ids = {n["node_id"] for n in graph["nodes"]}
    assert decoy not in ids and all(decoy not in (e["source"], e["target"]) for e in graph["links"])
    assert set(path) <= ids and r["kept_feature_nodes"] == 2
    assert [f["node_id"] for f in r["features"]] == [path[2], path[1]]  # most influential first
    assert "Next: " in r["summary"] and "Top path: token 'd' @1" in r["summary"]


def test_graph_json_follows_circuit_tracers_schema_and_the_adjacency_loads(traced):
    from safetensors.torch import load_file

    r, _ = traced["task"]
    files = run_dir(r)
    graph = GraphFile.model_validate_json((files / "graph.json").read_text())
    ids = [n.node_id for n in graph.nodes]
    assert len(ids) == len(set(ids)) == r["kept_nodes"] and len(graph.links) == r["kept_edges"]
    assert all(e.source in ids and e.target in ids for e in graph.links)
    assert {n.feature_type for n in graph.nodes} == {"cross layer transcoder", "embedding", "logit"}
    assert graph.metadata.prompt == r["prompt"] and graph.metadata.prompt_tokens == list(r["prompt"])
    assert graph.metadata.node_threshold == 0.8 and graph.metadata.schema_version == 1
    by_id = {n.node_id: n for n in graph.nodes}
    path = r["paths"][0]["nodes"]
    f0 = by_id[path[1]]
    assert (f0.layer, f0.ctx_idx, f0.jsNodeId, f0.activation) == ("0", X_POS, f"0_{path[1].split('_')[1]}-0", 1.0)
    assert f0.feature == (0 + int(path[1].split("_")[1])) * (int(path[1].split("_")[1]) + 1) // 2 + int(
        path[1].split("_")[1])  # cantor(layer, latent)
    logit = by_id[path[-1]]
    assert logit.is_target_logit and logit.layer == str(N_LAYERS + 1) and logit.clerp.startswith("Output ")
    assert [n for n in graph.nodes if n.feature_type == "embedding"] and all(
        n.layer == "E" for n in graph.nodes if n.feature_type == "embedding")
    meta = json.loads((files / "graph-metadata.json").read_text())
    assert meta["graphs"][0]["slug"] == graph.metadata.slug
    # the full adjacency, in the node order trace.json names
    t = load_file(str(files / "graph.safetensors"))
    node_ids = json.loads((files / "trace.json").read_text())["node_ids"]
    assert t["adjacency"].shape == (r["n_nodes"], r["n_nodes"]) == (len(node_ids), len(node_ids))
    assert t["edge_mask"].shape == t["adjacency"].shape and int(t["edge_mask"].sum()) >= r["kept_edges"]
    assert t["features"].shape == (r["n_feature_nodes"], 3)
    i, j = node_ids.index(path[2]), node_ids.index(path[1])
    assert float(t["adjacency"][i, j]) == pytest.approx(1.0, abs=1e-4)  # f0 -> f1 through the mover: p ~ 1


def test_the_intervention_check_predicts_the_real_model_on_linear_paths(traced):
    r, _ = traced["task"]
    ic = r["intervention_check"]
    assert ic["factor"] == 0.5 and ic["n"] == len(ic["rows"]) == r["n_active_features"] == 5
    assert ic["pearson"] > 0.9 and ic["ci95"][0] is not None
    for row in ic["rows"]:
        assert row["predicted"] == pytest.approx(row["measured"], abs=1e-4), row
    path, decoy = expected_ids(r["prompt"], D_VOCAB)
    rows = {row["node_id"]: row for row in ic["rows"]}
    assert rows[path[2]]["measured"] < -0.5 and rows[path[1]]["measured"] < -0.5  # halving the path halves the logit
    assert rows[decoy]["predicted"] == 0 and abs(rows[decoy]["measured"]) < 1e-6  # the decoy reaches no logit

    # zero-ablation: f0 switches f1 off (f1 = relu(MOVED - THETA) clips at 0), beyond the first-order prediction
    z = traced["ablate"][0]["intervention_check"]
    zr = {row["node_id"]: row for row in z["rows"]}
    T = len(r["prompt"])
    p = math.exp(SCORE) / (math.exp(SCORE) + T - 1)
    f1 = p * (1 + SKIP) - THETA
    assert zr[path[2]]["predicted"] == pytest.approx(zr[path[2]]["measured"], abs=1e-4)
    assert zr[path[1]]["predicted"] == pytest.approx(-L_LOGIT * p, abs=1e-4)
    assert zr[path[1]]["measured"] == pytest.approx(-L_LOGIT * f1, abs=1e-4)
    assert z["factor"] == 0.0 and z["pearson"] > 0.9


def test_top_contexts_of_the_kept_features(traced):
    r, _ = traced["task"]
    x = r["prompt"][X_POS]
    f1, f0 = r["features"]
    assert f0["contexts"] and all(f"\u00ab{x}\u00bb" in c["text"] and c["activation"] == pytest.approx(1.0)
                                  for c in f0["contexts"])
    assert all(c["text"].endswith("\u00ab=\u00bb") for c in f1["contexts"])  # f1 fires at '=' after an x
    assert r["contexts_corpus"] == "task:planted-trace"


def test_a_prompt_traced_to_one_token(traced):
    r, _ = traced["prompt"]
    assert r["task"] is None and r["prompt"] == "2c1=" and len(r["targets"]) == 1
    t = r["targets"][0]
    assert t["counterfactual"] is None and t["label"] == "'r'" and 0 < t["probability"] < 1
    path, _ = expected_ids("2c1=", TOY_ALPHABET.index("r"))
    assert r["paths"][0]["nodes"] == path and r["completeness_score"] == pytest.approx(1.0, abs=1e-5)
    assert r["features"][0]["contexts"][0]["text"] == "2c1\u00ab=\u00bb"  # the traced prompt is the corpus


class _Circles(HTMLParser):
    def __init__(self):
        super().__init__()
        self.nodes: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "circle" and "node" in (a.get("class") or "").split():
            self.nodes.append(a)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="the HTML view is checked in Debian's chromium "
                    "(/usr/bin/chromium: apt-get install -y chromium); not installed here")
def test_the_interactive_view_draws_every_node_in_a_real_browser(traced):
    r, _ = traced["task"]
    page = run_dir(r) / "graph.html"
    assert "http" not in page.read_text().split("<script", 1)[1].replace("http://www.w3.org/2000/svg", "")
    dom = subprocess.run([str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=60).stdout
    parser = _Circles()
    parser.feed(dom)
    graph = json.loads((run_dir(r) / "graph.json").read_text())
    assert sorted(n["data-node-id"] for n in parser.nodes) == sorted(n["node_id"] for n in graph["nodes"])
    hover = {n["data-node-id"]: n["data-hover"] for n in parser.nodes}
    f0 = r["features"][1]
    assert "top contexts:" in hover[f0["node_id"]] and f0["contexts"][0]["text"] in hover[f0["node_id"]]
    assert "activation 1" in hover[f0["node_id"]]
    assert dom.count('class="edge"') == len(graph["links"])


# ------------------------------------------------------------------ refusals, before any work

@pytest.mark.anyio
async def test_refusals_name_the_field(store_dir, tmp_path, monkeypatch):
    from mcp_interp.methods.tracing import trace_footprint
    from mcp_interp.models.tokenizers import CharTokenizer
    from mcp_interp.models.toy import register_toy, unregister_toy
    from mcp_interp.toymodels.planted_trace import build_planted_trace

    from ..methods.tiny_models import tiny_model

    tcs = str(save_planted(tmp_path / "tcs"))
    only0 = str(save_planted(tmp_path / "only0", layers=(0,)))
    wrong_hook = str(save_planted(tmp_path / "hook", hook="blocks.{layer}.hook_resid_pre"))
    base = {"model": MODEL, "transcoders": tcs, "wait_seconds": 60}
    register_toy("trace-test-olmo2", lambda: (tiny_model("olmo2", L=2, V=len(TOY_ALPHABET)),
                                              CharTokenizer(TOY_ALPHABET)), "post-norm test model", replace=True)

    async def refused(args: dict) -> str:
        err = await call_error(c, "trace", args)
        return err.removeprefix("Error executing tool trace: ")

    try:
        async with Client(build_server(store_dir)) as c:
            err = await refused({**base, "prompt": "0a1=", "task": TASK})
            assert err.startswith("prompt:") and "not both" in err
            err = await refused({**base, "prompt": "0a1=", "target": "pq"})
            assert err.startswith("target:") and "2 tokens" in err and "'p'" in err
            err = await refused({**base, "prompt": "0a1=", "target": "Q"})
            assert err.startswith("target:") and "cannot be encoded" in err
            err = await refused({**base, "prompt": "0a1=", "transcoders": only0})
            assert err.startswith("transcoders:") and "MLP layer(s) [1]" in err
            err = await refused({**base, "prompt": "0a1=", "transcoders": wrong_hook})
            assert err.startswith("transcoders:") and "hook_mlp_in" in err
            err = await refused({**base, "prompt": "0a1=", "transcoders": str(tmp_path / "none")})
            assert err.startswith("transcoders:") and "neither a stored run id nor a directory" in err
            err = await refused({**base, "model": "toy/tiny-random", "prompt": "0a1="})
            assert err.startswith("transcoders:") and "80 -> 80" in err and "32" in err  # widths of another model
            err = await refused({**base, "model": "toy/trace-test-olmo2", "prompt": "0a1="})
            assert err.startswith("model:") and "OLMo 2" in err and "raw stream" in err
            err = await refused({**base, "task": TASK, "example": 4000})
            assert err.startswith("example:") and "at most" in err
            # the memory budget: the graph's peak (methods.tracing.trace_footprint, as the tool computes it: one
            # target, 16 latents per token at most) of 5 tokens fits, of 6 does not
            cfg = build_planted_trace()[0].cfg
            monkeypatch.setenv("MCP_INTERP_REQUEST_MEMORY_MB", str(trace_footprint(cfg, 5, 80, 80, 81, 1) / 2**20))
            err = await refused({**base, "prompt": "0b123=", "target": "q"})
            assert err.startswith("prompt:") and "a prompt of at most 5 tokens" in err
            ok = await call(c, "trace", {**base, "prompt": "0b12=", "target": "q", "contexts_corpus": "none",
                                         "check_top": 0})
            assert ok["status"] == "complete" and ok["result"]["intervention_check"] is None
    finally:
        unregister_toy("trace-test-olmo2")


def test_the_view_module_needs_no_browser_to_lay_out(traced):
    """The static figure and the page share one layout: tokens at the bottom row, logits at the top."""
    from mcp_interp.artifacts.graph_view import layout

    r, _ = traced["task"]
    graph = json.loads((run_dir(r) / "graph.json").read_text())
    xy, n_pos, n_rows = layout(graph)
    assert n_pos == len(r["prompt"]) and n_rows == N_LAYERS + 2
    for n in graph["nodes"]:
        kind = n["feature_type"]
        row = 0 if kind == "embedding" else N_LAYERS + 1 if kind == "logit" else int(n["layer"]) + 1
        assert xy[n["node_id"]][1] == row and abs(xy[n["node_id"]][0] - n["ctx_idx"]) < 0.5


def test_the_views_draw_the_strongest_edges_of_a_large_graph(traced, monkeypatch):
    """A graph with more edges than a view draws: the strongest by share of their target's input are drawn, and the
    page's and the figure's titles say how many of how many."""
    from mcp_interp.artifacts import graph_view

    r, _ = traced["task"]
    graph = json.loads((run_dir(r) / "graph.json").read_text())
    n = len(graph["links"])
    assert n >= 4
    shares = graph_view.edge_shares(graph)
    drawn, left_out = graph_view.strongest_edges(graph, 3)
    assert len(drawn) == 3 and left_out == n - 3
    assert min(s for _, s in drawn) >= sorted(shares, reverse=True)[2] - 1e-12
    assert graph_view.strongest_edges(graph, n) == (list(zip(graph["links"], shares)), 0)
    monkeypatch.setattr(graph_view, "MAX_PAGE_EDGES", 3)
    monkeypatch.setattr(graph_view, "MAX_FIGURE_EDGES", 2)
    page = graph_view.graph_html(graph, {}, "t")
    data = json.loads(page.split('id="graph-data">', 1)[1].split("</script>", 1)[0].replace("<\\/", "</"))
    assert len(data["links"]) == 3 and data["title"] == f"t (the strongest 3 of {n} edges drawn)"
    fig = graph_view.graph_figure(graph, "a\nb")
    assert fig.axes[0].get_title() == f"a (the strongest 2 of {n} edges drawn)\nb"


def test_the_report_section_cites_the_run(traced):
    from mcp_interp.artifacts.report_sections import Figure, Para, Table, section

    r, _ = traced["task"]
    blocks, own = section("trace", r["run_id"], r, {}, ["graph.png"])
    assert own
    tables = [b for b in blocks if isinstance(b, Table)]
    assert tables[0].rows[0][0] == r["paths"][0]["text"] and all(row[-1] == f"`{r['run_id']}`" for t in tables
                                                                 for row in t.rows)
    assert len(tables[1].rows) == r["intervention_check"]["n"]
    assert any("Pearson r 1.000" in b.text for b in blocks if isinstance(b, Para))
    assert [b.name for b in blocks if isinstance(b, Figure)] == ["graph.png"]


@pytest.mark.anyio
async def test_trained_transcoders_by_run_id_on_a_layernorm_model(store_dir):
    """train_transcoders' run id is a transcoder set: on toy/tiny-random (LayerNorm, every MLP transcoded, errors
    nonzero) the graph's rows still add up to the real model's values, and the check runs in the real model."""
    async with Client(build_server(store_dir)) as c:
        tc = await call(c, "train_transcoders", {"model": "toy/tiny-random", "layers": [0, 1], "corpus": "random",
                                                 "n_tokens": 600, "context": 8, "width": 32, "k": 4, "epochs": 1,
                                                 "splice_windows": 0, "wait_seconds": 120})
        run_id = tc["result"]["run_id"]
        out = await call(c, "trace", {"model": "toy/tiny-random", "prompt": "abcabc", "transcoders": run_id,
                                      "contexts_corpus": "random", "contexts_tokens": 64, "wait_seconds": 120})
        r = out["result"]
        assert [Path(p).name for p in r["transcoders"]] == ["layers.0.mlp", "layers.1.mlp"]
        assert r["identity_error"] < 1e-4 and r["n_error_nodes"] == 2 * 6 and r["completeness_score"] < 1
        assert 1 <= len(r["targets"]) <= 10 and all(t["counterfactual"] is None for t in r["targets"])
        ic = r["intervention_check"]
        assert ic["n"] == min(8, r["n_feature_nodes"]) and all(row["measured"] is not None for row in ic["rows"])
        GraphFile.model_validate_json((run_dir(r) / "graph.json").read_text())
        # the same set named layer by layer, as load_sae and find_features take one: <run id>/layers.L.mlp
        again = await call(c, "trace", {"model": "toy/tiny-random", "prompt": "abcabc", "contexts_corpus": "none",
                                        "transcoders": [f"{run_id}/layers.0.mlp", f"{run_id}/layers.1.mlp"],
                                        "check_top": 0, "wait_seconds": 120})
        assert again["result"]["transcoders"] == r["transcoders"]
        assert again["result"]["n_feature_nodes"] == r["n_feature_nodes"]
        err = await call_error(c, "trace", {"model": "toy/tiny-random", "prompt": "abc",
                                            "transcoders": f"{run_id}/layers.7.mlp"})
        assert "transcoders:" in err and "layers.0.mlp, layers.1.mlp" in err, err


@pytest.mark.anyio
async def test_a_model_with_norms_after_its_sublayers(store_dir, tmp_path):
    """Gemma 3 style blocks (norms before and after attention and MLP, QK norm; random post-norm weights): the
    transcoders train_transcoders writes predict hook_mlp_out (after the MLP's output norm), so they splice there,
    the graph's rows add up to the real model's values, and the intervention check runs in the real model. A sparsify
    folder that does not say what it writes is refused on such a model, naming `transcoders`."""
    import shutil

    import torch

    from mcp_interp.models.tokenizers import CharTokenizer
    from mcp_interp.models.toy import register_toy, unregister_toy

    from ..methods.tiny_models import tiny_model

    def build():
        model = tiny_model("gemma3", L=2, V=len(TOY_ALPHABET))
        with torch.no_grad():
            for blk in model.blocks:
                blk.ln1_post.w.copy_(torch.rand_like(blk.ln1_post.w) + 0.5)
                blk.ln2_post.w.copy_(torch.rand_like(blk.ln2_post.w) + 0.5)
        return model, CharTokenizer(TOY_ALPHABET)

    register_toy("trace-test-gemma3", build, "post-norm test model", replace=True)
    model = "toy/trace-test-gemma3"
    try:
        async with Client(build_server(store_dir)) as c:
            tc = await call(c, "train_transcoders", {"model": model, "layers": [0, 1], "corpus": "random",
                                                     "n_tokens": 600, "context": 8, "width": 32, "k": 4, "epochs": 1,
                                                     "splice_windows": 2, "wait_seconds": 120})
            assert tc["status"] == "complete", tc
            run_id = tc["result"]["run_id"]
            out = await call(c, "trace", {"model": model, "prompt": "abcab", "transcoders": run_id,
                                          "contexts_corpus": "none", "wait_seconds": 120})
            r = out["result"]
            assert r["identity_error"] < 1e-4 and r["n_error_nodes"] == 2 * 5 and r["n_feature_nodes"] > 0
            assert all(row["measured"] is not None for row in r["intervention_check"]["rows"])
            # the same folders without their 'writes' (as sparsify's own trainer leaves them) are refused
            foreign = tmp_path / "foreign"
            for p in r["transcoders"]:
                shutil.copytree(p, foreign / Path(p).name)
                cfg = json.loads((foreign / Path(p).name / "cfg.json").read_text())
                del cfg["writes"]
                (foreign / Path(p).name / "cfg.json").write_text(json.dumps(cfg))
            err = await call_error(c, "trace", {"model": model, "prompt": "abcab", "transcoders": str(foreign)})
            assert "transcoders:" in err and "Gemma 2/3" in err and "hook_mlp_out" in err, err
    finally:
        unregister_toy("trace-test-gemma3")


@pytest.mark.anyio
async def test_trained_transcoders_still_find_the_planted_path(store_dir, tmp_path):
    """train_transcoders on toy/planted-trace (no norms: the transcoders read the MLP's input, the stream itself),
    on a corpus where the toy's characters vary independently (on the task's prompts alone '=' is always last, and
    a transcoder reads it as a stand-in for its bias): on every example one of the top three paths is the planted
    one, token x @1 -> [an MLP0 feature @1 ->] an MLP1 feature @last -> the answer's logit. The MLP0 step may be a
    feature or MLP0's skip term (f0 = relu(one-hot x) is linear on tokens, so a trained transcoder may fold it into
    W_skip; then the path's first edge is token -> MLP1 feature), and the graph is complete up to a small error."""
    import random

    rng = random.Random(0)
    chars = LETTERS + "0123"
    corpus = tmp_path / "planted.txt"
    corpus.write_text("".join("".join(rng.choice(chars) for _ in range(3)) + rng.choice(["=", "=", rng.choice(chars)])
                              for _ in range(3000)))
    async with Client(build_server(store_dir)) as c:
        tc = await call(c, "train_transcoders", {"model": MODEL, "layers": [0, 1], "corpus": "files",
                                                 "files": [str(corpus)], "context": 4, "skip_first": 0,
                                                 "n_tokens": 8000, "width": 32, "k": 4, "epochs": 100,
                                                 "splice_windows": 4, "wait_seconds": 120})
        assert tc["status"] == "complete", tc
        assert all(t["explained_variance"] > 0.9 for t in tc["result"]["transcoders"]), tc["result"]["transcoders"]
        for example in range(6):
            r = (await call(c, "trace", {"model": MODEL, "task": TASK, "example": example, "check_top": 0,
                                         "transcoders": tc["result"]["run_id"], "contexts_corpus": "none",
                                         "wait_seconds": 120}))["result"]
            assert r["completeness_score"] > 0.95, r["completeness_score"]
            last = len(r["tokens"]) - 1
            through = [("E", X_POS), ("0", X_POS), ("1", last), (str(N_LAYERS + 1), last)]  # node id: layer_*_pos

            def planted(ids: list[str]) -> bool:
                want = through if len(ids) == 4 else [through[0], *through[2:]]
                parts = [i.split("_") for i in ids]
                return len(ids) in (3, 4) and all(p[0] == layer and p[2] == str(pos) and p[1] != "-1"
                                                  for p, (layer, pos) in zip(parts, want))
            assert any(planted(p["nodes"]) for p in r["paths"][:3]), (r["prompt"], [p["text"] for p in r["paths"]])
        # the same transcoder is a feature source of a model without norms: find_features' identity holds
        ff = await call(c, "find_features", {"model": MODEL, "task": TASK, "variable": "x", "position": "X",
                                             "source": "sae", "sae": f"{tc['result']['run_id']}/layers.0.mlp", "n": 16,
                                             "n_perm": 19, "test_top": 1, "wait_seconds": 120})
        assert ff["status"] == "complete" and ff["result"]["identity_max_abs_diff"] < 1e-5, ff
