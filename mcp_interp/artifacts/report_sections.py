"""One report section per stored run: the numbers of its result, each beside the run id it came from.

A section is a list of blocks (`Heading`, `Para`, `Table`, `Figure`) that `report` renders to markdown and to
HTML. Every paragraph that states a number ends with its citation and every table has a `run` column, so a
reader (or a test) can trace each number to a stored run. A tool without a section of its own, or a result
whose shape a section does not recognise (an older run), gets the generic section: its summary and key
metrics as stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str  # markdown inline: `code` and **bold** only


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Figure:
    run_id: str
    name: str  # file name inside the run
    caption: str


Block = Heading | Para | Table | Figure


def cite(run_id: str) -> str:
    return f"(run `{run_id}`)"


def num(x: Any, digits: int = 2) -> str:
    """A number as the report shows it; None / NaN (undefined in the stored result) as 'n/a'."""
    if x is None or isinstance(x, bool):
        return "n/a" if x is None else str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 1e5):
            return f"{x:.{digits}g}" if abs(x) >= 1e5 else f"{x:.1e}"
        return f"{x:.{digits}f}"
    return str(x)


def ci(pair: Any, digits: int = 2) -> str:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return "n/a"
    return f"{num(pair[0], digits)} .. {num(pair[1], digits)}"


def stat(s: Any, digits: int = 2) -> str:
    """A stored Stat {mean, ci95, n} as 'mean [lo, hi] (n=..)'."""
    if not isinstance(s, dict):
        return num(s, digits)
    n = f" (n={s['n']})" if s.get("n") is not None else ""
    return f"{num(s.get('mean'), digits)} [{ci(s.get('ci95'), digits)}]{n}"


def _summary(run_id: str, result: dict) -> list[Block]:
    text = result.get("summary") or result.get("verdict")
    return [Para(f"**{text}** {cite(run_id)}")] if text else []


def _warnings(run_id: str, result: dict) -> list[Block]:
    warns = result.get("warnings") or []
    return [Para(f"Warning {cite(run_id)}: {w}") for w in warns[:5]]


def _figures(run_id: str, pngs: list[str], wanted: Callable[[str], bool], caption: str, limit: int = 4) -> list[Block]:
    return [Figure(run_id, p, f"{caption}: {p}") for p in pngs if wanted(p)][:limit]


def _kv_table(run_id: str, rows: list[tuple[str, Any]]) -> Table:
    return Table(["quantity", "value", "run"], [[k, v if isinstance(v, str) else num(v, 3), f"`{run_id}`"]
                                                for k, v in rows])


# ------------------------------------------------------------------ per tool

def baseline(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    out: list[Block] = [Para(f"Task `{r['task']}` on `{r['model']}`, counterfactual `{r['counterfactual']}`, "
                             f"n={r['n']}, "
                             f"seed {r['seed']}, metric {r['metric']}. **Verdict:** {r['verdict']} {cite(run_id)}"),
                        Table(["metric", "mean [95% CI] (n)", "run"],
                              [[k, stat(v, 3), f"`{run_id}`"] for k, v in r["metrics"].items()]),
                        Table(["counterfactual generator", "label changes", "model follows [95% CI]", "run"],
                              [[c["generator"], num(c["label_changes"]), stat(c["model_follows"]), f"`{run_id}`"]
                               for c in r["counterfactual_checks"]])]
    return out + _figures(run_id, pngs, lambda p: True, "per-example metric")


def locate(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    out = _summary(run_id, r) + [Para(
        f"Activation patching ({r['direction']}, counterfactual `{r['counterfactual']}`, metric {r['metric']}, "
        f"n={r['n']}, seed {r['seed']}): clean metric {stat(r['clean_metric'])}, counterfactual metric "
        f"{stat(r['counterfactual_metric'])} {cite(run_id)}. Normalised effect: {r['normalisation']}.")]
    if r.get("flow"):
        out.append(Table(["layers", "strongest position", "mean effect", "run"],
                         [[f"{f['layers'][0]}–{f['layers'][1]}", f["position"], num(f["mean_effect"]), f"`{run_id}`"]
                          for f in r["flow"]]))
    out.append(Table(["site", "layer", "head", "position", "effect", "95% CI", "run"],
                     [[c["site"], str(c["layer"]), "" if c.get("head") is None else str(c["head"]), c["position"],
                       num(c["effect"]), ci(c["ci95"]), f"`{run_id}`"]
                      for cells in r["best_cells"].values() for c in cells]))
    return out + _figures(run_id, pngs, lambda p: "heatmap" in p, "patching effects")


def attribute(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    out = _summary(run_id, r) + [
        Para(f"Method `{r['method']}` on {r['level']} ({r['n_units']} units), counterfactual `{r['counterfactual']}`, "
             f"n={r['n']}, seed {r['seed']}: clean metric {stat(r['clean_metric'])}, counterfactual "
             f"{stat(r['counterfactual_metric'])} {cite(run_id)}."),
        Table(["unit", "score", "95% CI", "run"],
              [[u["name"], num(u["score"]), ci(u.get("ci95")), f"`{run_id}`"] for u in r["top"][:10]])]
    c = r.get("circuit") or {}
    if c.get("size") is not None:
        units = ", ".join(c.get("units") or [])
        out.append(Para(f"Circuit: the top {c['size']} units ({units}) keep faithfulness {num(c.get('faithfulness'))} "
                        f"(target {num(c.get('target'))}, reached: {c.get('reached_target')}) {cite(run_id)}."))
    f = r.get("faithfulness") or {}
    if f:
        out.append(Para(f"Faithfulness curve: CPR {num(f.get('cpr'), 3)}, CMD {num(f.get('cmd'), 3)} {cite(run_id)}."))
    return out + _figures(run_id, pngs, lambda p: True, "attribution")


def train_das(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    site = r["site"]
    head = f" head {site['head']}" if site.get("head") is not None else ""
    out = _summary(run_id, r) + [
        Para(f"Variable `{r['variable']}` at {site['hook']}{head}, position {site['position']}, method {r['method']}, "
             f"k={r['k']}; n_train={r['n_train']}, n_test={r['n_test']}, shared base prompts {r['shared_bases']} "
             f"{cite(run_id)}."),
        _kv_table(run_id, [("held-out IIA", stat(r["test_iia"])), ("train IIA", stat(r["train_iia"])),
                           *((f"control: {k}", stat(v)) for k, v in r["controls"].items()),
                           ("base accuracy (no intervention)", r["base_accuracy"])])]
    rc = r.get("rank_curve")
    if rc:
        out.append(Table(["k", "held-out IIA", "random rotation", "run"],
                         [[str(k), num(a), num(b), f"`{run_id}`"] for k, a, b in
                          zip(rc["ks"], rc["test_iia"], rc["random_iia"])]
                         + [["full vector", num(rc["full_vector_iia"]), "", f"`{run_id}`"]]))
    return out + _figures(run_id, pngs, lambda p: True, "DAS")


def eval_das(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    out = _summary(run_id, r) + [
        Para(f"Rotation of run `{r['source_run']}` (k={r['k']}) on `{r['task']}` / `{r['variable']}`, split "
             f"{r['split']} {cite(run_id)}."),
        _kv_table(run_id, [("IIA", stat(r["iia"])), *((f"control: {k}", stat(v)) for k, v in r["controls"].items()),
                           ("base prompts seen in training", r.get("bases_seen_in_training"))])]
    return out + _figures(run_id, pngs, lambda p: True, "DAS evaluation")


def scrub_hypothesis(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    def rec(x: dict) -> str:
        return f"{num(x['mean'])} ± {num(x['std'])}"
    abl = r.get("ablations") or {}
    out = _summary(run_id, r) + [
        Table(["hypothesis", "loss recovered", f"{r['metric']} recovered", "zero ablation", "mean ablation", "n",
               "seeds", "run"],
              [[r["hypothesis"], rec(r["loss_recovered"]), rec(r["metric_recovered"]),
                rec(abl["zero"]["loss_recovered"]) if "zero" in abl else "",
                rec(abl["mean"]["loss_recovered"]) if "mean" in abl else "", str(r["n"]), str(len(r["seeds"])),
                f"`{run_id}`"]])]
    if r.get("contributions"):
        out.append(Table(["node", "component", "claims", "drop effect (loss)", "drop effect (metric)", "run"],
                         [[c["name"], c["label"], c["interp"], num(c["drop_effect"]), num(c["drop_effect_metric"]),
                           f"`{run_id}`"] for c in r["contributions"]]))
    return out + _figures(run_id, pngs, lambda p: True, "scrubbing")


def _sae(run_id: str, r: dict, pngs: list[str], what: str) -> list[Block]:
    q = r.get("quality") or {}
    out = _summary(run_id, r) + [Para(f"{what} at {r['hook']} of `{r['model']}`: {r['architecture']}, "
                                      f"d_in {r['d_in']}, "
                                      f"d_sae {r['d_sae']} {cite(run_id)}.")]
    rows = [(k, v) for k, v in q.items() if isinstance(v, (int, float))]
    if rows:
        out.append(_kv_table(run_id, rows))
    return out + _figures(run_id, pngs, lambda p: True, "SAE")


def train_sae(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    return _sae(run_id, r, pngs, f"SAE trained on the {r['corpus']} corpus ({r['tokens_collected']} tokens)")


def load_sae(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    return _sae(run_id, r, pngs, f"SAE loaded from {r['source']}")


def train_transcoders(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    out = _summary(run_id, r) + [
        Para(f"TopK skip transcoders of `{r['model']}` on the {r['corpus']} corpus ({r['tokens_collected']} tokens): "
             f"{r['d_model']} -> {r['width']} latents, k {r['k']}, held-out rows {r['held_out_rows']} "
             f"{cite(run_id)}."),
        Table(["MLP", "explained variance", "L0", "dead", "run"],
              [[str(t["layer"]), num(t["explained_variance"], 3), num(t["l0"], 1), str(t["dead"]), f"`{run_id}`"]
               for t in r["transcoders"]])]
    rep = r.get("replacement")
    if rep:
        out.append(Para(f"Every transcoded MLP replaced (no error terms): CE {num(rep['ce_replacement'], 3)} against "
                        f"{num(rep['ce_original'], 3)} for the original and {num(rep['ce_zero_ablation'], 3)} with "
                        f"those MLPs zero-ablated; KL {num(rep['kl_replacement'], 4)} {cite(run_id)}."))
    return out + _figures(run_id, pngs, lambda p: True, "transcoders")


def find_features(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    out = _summary(run_id, r) + [
        Para(f"Features of {r['source']} at {r['hook']} ({r['n_features']} features) for `{r['variable']}` "
             f"({', '.join(r['classes'])}) at {r['position']}, n={r['n']}: {r['n_significant']} with q < 0.05 "
             f"{cite(run_id)}."),
        Table(["feature", r["stat"], "p", "q", "run"],
              [[f["name"], num(f["score"], 3), num(f["p"], 3), num(f["q"], 3), f"`{run_id}`"]
               for f in r["features"][:8]])]
    if r.get("causal"):
        out.append(Table(["feature", "intervention", "effect", "95% CI", "run"],
                         [[c["name"], c["intervention"], num(c["effect"], 3), ci(c["ci95"], 3), f"`{run_id}`"]
                          for c in r["causal"]]))
    # the ranking and the causal tests first; the per-feature histograms fill what room is left
    return out + _figures(run_id, sorted(pngs, key=lambda p: p.startswith("hist_")), lambda p: True, "features")


def compare_features(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    a, b, sim = r["a"], r["b"], r["similarity"]

    def side(s: dict) -> str:
        return f"`{s['model']}` {s['source']} at {s['hook']} ({s['n_features']} features)"

    counts = r.get("causal_counts") or {}
    out = _summary(run_id, r) + [
        Para(f"A: {side(a)}; B: {side(b)}; {r['n_rows']} aligned rows of {r['inputs']}. "
             f"Linear CKA {num(sim['cka'], 3)} "
             f"(permutation p {num(sim['cka_p'], 3)}, null mean {num(sim['cka_null_mean'], 3)}), SVCCA "
             f"{num(sim['svcca'], 3)}; {r['n_matched']} of {r['n_pairs']} one-to-one pairs matched at FDR "
             f"{num(r['fdr'], 2)} against the {r['null']} null, {num(r['expected_null'], 1)} expected by chance "
             f"{cite(run_id)}." + (f" Causally: {counts.get('validated', 0)} validated, "
                                   f"{counts.get('correlational only', 0)} correlational only, "
                                   f"{counts.get('contradicted', 0)} contradicted {cite(run_id)}." if counts else ""))]
    rows = [m for m in r["matches"] if m["significant"]][:8]
    if rows:
        out.append(Table(["A", "B", "r", "q", "decoder cos", "status", "run"],
                         [[m["name_a"], m["name_b"], num(m["r"], 3), num(m["q"], 3), num(m.get("decoder_cos"), 2),
                           m.get("status") or "", f"`{run_id}`"] for m in rows]))
    return out + _figures(run_id, pngs, lambda p: True, "comparison")


def logit_lens(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    first = r["first_layer"]
    where = f"layer {first} (`{r['first_hook']}`)" if first is not None else "no layer"
    out = _summary(run_id, r) + [Para(
        f"{r['lens'].capitalize()} lens on `{r['model']}`, {r['task'] or 'free prompts'} (n={r['n']}): the answer "
        f"first becomes top-1 at END at {where} {cite(run_id)}.")]
    rows = []
    for x in r["layers"]:
        m = (x.get("metric") or {}).get("END")
        p = (x.get("answer_prob") or {}).get("END")
        top = x["top_tokens"][0] if x["top_tokens"] else {"token": "", "mean_prob": None}
        rows.append([str(x["layer"]), f"`{x['hook']}`", stat(m) if m else "", stat(p, 3) if p else "",
                     f"{top['token']!r} ({num(top['mean_prob'])})", f"`{run_id}`"])
    out.append(Table(["layer", "hook", f"{r['metric'] or 'metric'} at END", "P(answer) at END", "top token", "run"],
                     rows))
    return out + _figures(run_id, pngs, lambda p: True, "logit lens")


def attention(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    out = _summary(run_id, r) + [Para(
        f"Attention of {r['n_heads']} heads of `{r['model']}` from {r['from_position']} on `{r['task']}` "
        f"(n={r['n']}, seed {r['seed']}), ranked by {r['ranking']} {cite(run_id)}.")]
    pos = r["to_positions"]
    out.append(Table(["head", *[f"to {p} [95% CI]" for p in pos], "score [95% CI]", "run"],
                     [[h["head"], *[stat(h["attention"].get(p)) for p in pos],
                       f"{num(h['score'])} [{ci(h['score_ci95'])}]", f"`{run_id}`"] for h in r["top"][:10]]))
    return out + _warnings(run_id, r) + _figures(run_id, pngs, lambda p: True, "attention")


def steer(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    out = _summary(run_id, r) + [Para(
        f"Held {r['intervention']} at `{r['hook']}` ({', '.join(r['positions'])}) on `{r['model']}`"
        + (f", task `{r['task']}` (n={r['n']})" if r.get("task") else f" ({r['n']} prompts)")
        + f"; alpha multiplies {r['alpha_unit']}, vector norm {num(r['vector_norm'])} against a site norm of "
        f"{num(r['site_norm'])}; control: {r['control']} {cite(run_id)}.")]
    if r.get("metric"):
        out.append(Table(["alpha", "metric", "flip rate", "to counterfactual", "control metric", "control flip rate",
                          "run"],
                         [[num(a["alpha"]), stat(a["metric"]) if a["metric"] else "", stat(a["flip_rate"]),
                           stat(a["to_counterfactual"]) if a["to_counterfactual"] else "",
                           stat(a["control_metric"]) if a["control_metric"] else "", stat(a["control_flip_rate"]),
                           f"`{run_id}`"] for a in r["by_alpha"]]))
    gens = [(g["prompt"], c) for g in r["generations"][:2] for c in g["by_alpha"]]
    if gens:
        out.append(Table(["prompt", "alpha", "steered", "control", "run"],
                         [[repr(p), num(c["alpha"]), repr(c["steered"]), repr(c["control"]), f"`{run_id}`"]
                          for p, c in gens]))
    return out + _warnings(run_id, r) + _figures(run_id, pngs, lambda p: True, "steering")


def trace(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    where = f"task `{r['task']}` example {r['example']}" if r.get("task") else "a prompt"
    out = _summary(run_id, r) + [
        Para(f"Attribution graph of {r['prompt']!r} ({where}, {len(r['tokens'])} tokens) on `{r['model']}` towards "
             f"{', '.join(t['label'] for t in r['targets'][:5])}: {r['kept_nodes']} of {r['n_nodes']} nodes kept "
             f"({r['kept_feature_nodes']} of {r['n_feature_nodes']} feature nodes; {r['n_active_features']} active "
             f"latents), {r['kept_edges']} edges at node / edge thresholds {num(r['node_threshold'])} / "
             f"{num(r['edge_threshold'])}; replacement score {num(r['replacement_score'], 3)}, completeness score "
             f"{num(r['completeness_score'], 3)} {cite(run_id)}."),
        Table(["top path", "share of the target weight", "run"],
              [[p["text"], num(p["score"], 3), f"`{run_id}`"] for p in r["paths"][:5]])]
    ic = r.get("intervention_check")
    if ic and ic["rows"]:
        what = "zero-ablated" if ic["factor"] == 0 else f"scaled by {num(ic['factor'])}"
        out.append(Para(f"Intervention check: each of the top {ic['n']} features {what} in the real model (error term "
                        f"kept); change of {ic['target']} predicted by the graph against measured: Pearson r "
                        f"{num(ic['pearson'], 3)} [{ci(ic['ci95'], 3)}] (n={ic['n']}) {cite(run_id)}."))
        out.append(Table(["feature", "activation", "predicted change", "measured change", "run"],
                         [[row["label"], num(row["activation"], 3), num(row["predicted"], 3), num(row["measured"], 3),
                           f"`{run_id}`"] for row in ic["rows"]]))
    return out + _figures(run_id, pngs, lambda p: p == "graph.png", "pruned attribution graph")


def probe(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    out = _summary(run_id, r) + [Para(
        f"Linear probes for `{r['variable']}` at {r['position']} ({r['site']}) of `{r['model']}` on `{r['task']}`: "
        f"n_train={r['n_train']}, n_test={r['n_test']}, shared base prompts {r['shared_bases']}; majority class "
        f"{stat(r['majority'])}; best layer {r['best_layer']} {cite(run_id)}.")]
    out.append(Table(["layer", "held-out accuracy", "control task", "selectivity", "run"],
                     [[str(x["layer"]), stat(x["accuracy"]), stat(x["control_accuracy"]), stat(x["selectivity"]),
                       f"`{run_id}`"] for x in r["layers"]]))
    return out + _figures(run_id, pngs, lambda p: True, "probe")


def sweep(run_id: str, r: dict, pngs: list[str]) -> list[Block]:
    keys = list(r["grid"])
    metric = r.get("metric") or "metric"
    out: list[Block] = [Para(
        f"`{r['tool']}` over {' x '.join(f'{k} ({len(v)})' for k, v in r['grid'].items())}: {r['n_runs']} runs, "
        f"{r['n_complete']} complete ({r['n_cached']} from the store), {r['n_failed']} failed; key metric "
        f"`{metric}` {cite(run_id)}.")]
    # each number cites the run that produced it, not the sweep that gathered it
    out.append(Table([*keys, metric, "status", "run"],
                     [[*(str(row["args"].get(k)) for k in keys),
                       num(row["metric"], 3) if not isinstance(row.get("metric"), str) else row["metric"],
                       row["status"] if not row.get("error") else f"{row['status']}: {row['error'][:80]}",
                       f"`{row['run_id']}`" if row.get("run_id") else ""] for row in r["rows"]]))
    return out + _figures(run_id, pngs, lambda p: True, "sweep")


def generic(run_id: str, r: dict, key_metrics: dict, pngs: list[str]) -> list[Block]:
    out = _summary(run_id, r)
    rows = [(k, v) for k, v in (key_metrics or {}).items() if isinstance(v, (int, float, str))]
    if rows:
        out.append(_kv_table(run_id, rows))
    return out + _figures(run_id, pngs, lambda p: True, "plot")


SECTIONS: dict[str, tuple[str, Callable[[str, dict, list[str]], list[Block]]]] = {
    "run_baseline": ("Baseline: does the model solve the task?", baseline),
    "locate": ("Locate: where does the information live?", locate),
    "attribute": ("Attribute: which components carry it?", attribute),
    "train_das": ("DAS: is the variable a subspace?", train_das),
    "eval_das": ("DAS re-evaluated", eval_das),
    "scrub_hypothesis": ("Causal scrubbing: how much does the hypothesis explain?", scrub_hypothesis),
    "train_sae": ("SAE trained", train_sae),
    "train_transcoders": ("Transcoders trained", train_transcoders),
    "load_sae": ("SAE loaded", load_sae),
    "find_features": ("Features: which latents carry the variable?", find_features),
    "compare_features": ("Comparison: do two sides carry the same features?", compare_features),
    "attention": ("Attention: where do the heads look?", attention),
    "logit_lens": ("Logit lens: which layer predicts the answer?", logit_lens),
    "probe": ("Probe: is the variable linearly decodable?", probe),
    "steer": ("Steering: does the direction change what the model says?", steer),
    "trace": ("Trace: which features carry this prediction?", trace),
    "sweep": ("Sweep: one tool over a grid", sweep),
}
ORDER = list(SECTIONS)  # the research loop's order; other tools follow


def section(tool: str, run_id: str, result: dict, key_metrics: dict, pngs: list[str]) -> tuple[list[Block], bool]:
    """The blocks for one run (heading included), and whether its tool's own section rendered it (False: the
    generic section stood in because the stored result does not have the fields the section reads)."""
    title, fn = SECTIONS.get(tool, (tool, None))
    head = Heading(f"{title} — `{tool}` run `{run_id}`")
    if fn is not None:
        try:
            return [head, *fn(run_id, result, pngs), *_warnings(run_id, result)], True
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            pass
    return [head, *generic(run_id, result, key_metrics, pngs), *_warnings(run_id, result)], fn is None
