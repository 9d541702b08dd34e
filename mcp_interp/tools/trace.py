"""Tool trace: the attribution graph of one prompt through a transcoder per MLP layer (methods/tracing): pruned,
scored, read as paths, its top features checked by interventions in the real model, and stored as circuit-tracer
graph JSON, the full adjacency, an interactive HTML view and a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from .. import lazy
from ..methods import features
from ..methods.core import Progress
from ..methods.core.footprint import Footprint, gib, largest_fitting, request_budget
from ..tasks.dataset import encode_prompt
from . import transcoder_sets
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .common import DEFAULT_MODEL, MaybeFloat, dataset, resolve_task
from .errors import ToolError, field_error

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts (torch, matplotlib)
torch = lazy("torch")
tracing = lazy("mcp_interp.methods.tracing")
tracing_graph = lazy("mcp_interp.methods.tracing.graph")
contexts_m = lazy("mcp_interp.methods.tracing.contexts")
graph_json_m = lazy("mcp_interp.methods.tracing.graph_json")
graph_view = lazy("mcp_interp.artifacts.graph_view")

TOOL = "trace"
MAX_RESULT_FEATURES = 40  # kept feature nodes listed in the result (all of them are in trace.json)
CONTEXT_WINDOW = 32       # tokens per corpus window of the top-contexts corpus


class TraceInput(HeavyInput):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    prompt: str | None = Field(None, description="The prompt to trace (give a prompt or a task).")
    task: str | None = Field(None, description="Instead of a prompt: a task; example `example` of its dataset is "
                             "traced, towards its answer's logit minus the counterfactual answer's.")
    example: int = Field(0, ge=0, le=4095, description="With a task: which example of its dataset (seeded by seed).")
    counterfactual: str | None = Field(None, description="With a task: the generator whose answer is the "
                                       "counterfactual answer (default: the task's first).")
    transcoders: str | list[str] = Field(..., description="One transcoder per MLP layer: a train_transcoders run id, "
                                         "load_sae run ids, a hub repository of layers.L.mlp folders (a "
                                         "pretrained set, e.g. EleutherAI's; downloaded in the job), or directories "
                                         "(one transcoder folder: sparsify layers.L.mlp or sae-lens; or a folder of "
                                         "them). Every MLP layer needs one (the replacement model replaces them "
                                         "all).")
    target: str | None = Field(None, description="A token string (exactly one token of the vocabulary) whose logit "
                               "is traced. Default: the task's logit difference with a task, else the model's most "
                               "likely next tokens (up to max_n_logits, until desired_logit_prob).")
    node_threshold: float = Field(0.8, ge=0, le=1, description="Keep the most influential nodes up to this share of "
                                  "the total influence (published default 0.8).")
    edge_threshold: float = Field(0.98, ge=0, le=1, description="Keep the strongest edges up to this share of the "
                                  "total edge score (published default 0.98).")
    max_feature_nodes: int | None = Field(4096, ge=1, le=200_000, description="At most this many active latents "
                                          "become feature nodes (the most influential; null: all of them).")
    max_n_logits: int = Field(10, ge=1, le=64, description="Default targets: at most this many next tokens.")
    desired_logit_prob: float = Field(0.95, gt=0, le=1, description="Default targets: until their probabilities "
                                      "sum to this.")
    n_paths: int = Field(5, ge=1, le=50, description="Top paths to the targets reported in words.")
    check_top: int = Field(8, ge=0, le=64, description="Intervention check: the feature nodes the graph says move "
                           "the first target most (|activation x total effect|) edited one at a time in the real "
                           "model (0 skips the check).")
    intervention_factor: float = Field(0.0, ge=-10, le=10, description="Intervention check: each feature's "
                                       "activation becomes this times itself (0 zero-ablates, 0.5 halves, -1 "
                                       "flips); the error term is kept.")
    contexts_corpus: Literal["auto", "task", "prompt", "shakespeare", "random", "none"] = Field(
        "auto", description="Where kept features' top-activating contexts come from: the task's prompts, the "
        "traced prompt, the Shakespeare plays, random tokens (toy models), or none. auto: the task's prompts "
        "with a task, else Shakespeare (random tokens when the tokenizer cannot read it).")
    contexts_tokens: int = Field(1024, ge=8, le=65_536, description="Corpus tokens for the top contexts (windows "
                                 "of up to 32 tokens, run in batches).")
    n_contexts: int = Field(5, ge=1, le=20, description="Top contexts per kept feature.")
    batch_size: int | None = Field(None, ge=1, le=65_536, description="Graph rows pulled back together (default: "
                                   "as many as 256 MB hold).")


class TargetRow(BaseModel):
    label: str
    token: int
    counterfactual: int | None = Field(description="a logit difference's second token; null for one logit")
    value: MaybeFloat = Field(description="in the real model: the demeaned logit, or the logit difference")
    probability: MaybeFloat = Field(description="softmax probability of `token` in the real model")
    weight: MaybeFloat = Field(description="its weight in the influence computation")


class PathRow(BaseModel):
    text: str = Field(description="the path in words: node -(edge weight, share of the next node's input)-> node")
    score: MaybeFloat = Field(description="share of the targets' total weight that flows along it")
    nodes: list[str] = Field(description="node ids (circuit-tracer's) from source to logit")


class ContextRow(BaseModel):
    text: str = Field(description="the window around the firing token, which is marked «like this»")
    activation: MaybeFloat
    window: int
    position: int


class FeatureNode(BaseModel):
    node_id: str
    layer: int
    latent: int
    position: int
    token: str = Field(description="the prompt token at its position")
    activation: MaybeFloat
    influence: MaybeFloat = Field(description="its influence on the targets (share of the targets' weight)")
    contexts: list[ContextRow]


class CheckRow(BaseModel):
    node_id: str
    label: str
    activation: MaybeFloat
    influence: MaybeFloat
    predicted: MaybeFloat = Field(description="target change the graph predicts (frozen linear model)")
    measured: MaybeFloat = Field(description="target change in the real model, error term kept")


class InterventionCheck(BaseModel):
    factor: MaybeFloat = Field(description="each feature's activation became factor x itself")
    target: str
    clean_value: MaybeFloat
    rows: list[CheckRow]
    pearson: MaybeFloat = Field(description="Pearson r of predicted vs measured (null: n < 4 or a constant side)")
    ci95: list[MaybeFloat] = Field(description="95% CI of r (Fisher's z)")
    n: int
    max_abs_error: MaybeFloat


class TraceResult(RunResult):
    run_id: str
    model: str
    prompt: str
    tokens: list[str]
    task: str | None
    example: int | None
    targets: list[TargetRow]
    transcoders: list[str] = Field(description="the transcoder folder of each MLP layer, in layer order")
    n_active_features: int
    n_feature_nodes: int
    n_error_nodes: int
    n_nodes: int
    kept_nodes: int = Field(description="nodes in the pruned graph (graph.json)")
    kept_edges: int
    kept_feature_nodes: int
    node_threshold: MaybeFloat
    edge_threshold: MaybeFloat
    replacement_score: MaybeFloat = Field(description="share of the inputs' influence that flows through features "
                                          "rather than error nodes (1: the transcoders explain everything)")
    completeness_score: MaybeFloat = Field(description="influence-weighted share of node inputs not from errors")
    identity_error: MaybeFloat = Field(description="max |sum of a node's edges + constant - its value|: 0 up to "
                                       "rounding")
    paths: list[PathRow]
    features: list[FeatureNode] = Field(description=f"kept feature nodes, most influential first (at most "
                                        f"{MAX_RESULT_FEATURES}; trace.json lists all)")
    contexts_corpus: str
    intervention_check: InterventionCheck | None
    html_path: str = Field(description="the interactive view (open in a browser)")


class TraceOutput(HeavyOutput):
    result: TraceResult | None = None


# ------------------------------------------------------------------ the prompt, the target, the budget

def _prompt(run: ToolRun, lm, args: TraceInput) -> tuple[list[int], str, object, object, list[str]]:
    """(tokens, prompt text, task spec or None, the method's targets or None, warnings)."""
    warnings: list[str] = []
    cfg = lm.model.cfg
    spec = targets = None
    if args.task is not None:
        spec = resolve_task(run.app, args.task)
        ds = dataset(spec, lm.tokenizer, args.example + 1, args.seed, args.counterfactual, up_to=True,
                     answer_changes=True, model=lm.model, model_id=args.model)
        if args.example >= len(ds):
            raise field_error("example", f"{spec.name!r} has only {len(ds)} distinct examples with this seed",
                              f"example at most {len(ds) - 1}")
        ex = ds.examples[args.example]
        tokens, text = list(ex.tokens), ex.prompt
        if args.target is None:
            if len(ex.answer_ids) > 1 or len(ex.cf_answer_ids) > 1:
                warnings.append(f"the answers {ex.answer!r} / {ex.cf_answer!r} span several tokens; their first "
                                f"tokens' logits are traced")
            targets = [tracing.LogitTarget(ex.answer_id, ex.cf_answer_id, f"{ex.answer!r} - {ex.cf_answer!r}")]
    else:
        try:
            tokens = encode_prompt(lm.tokenizer, args.prompt, "prompt")[0]
        except Exception as e:
            raise field_error("prompt", f"cannot encode it for {args.model} ({e})", "text in this tokenizer's "
                              "alphabet") from None
        text = args.prompt
    if not tokens:
        raise field_error("prompt", "it encodes to no tokens", "a non-empty prompt")
    if len(tokens) > cfg.n_ctx:
        raise field_error("prompt", f"{len(tokens)} tokens exceed {args.model}'s context of {cfg.n_ctx}",
                          f"a prompt of at most {cfg.n_ctx} tokens")
    if args.target is not None:
        targets = [_target(lm, args.target, args.model)]
    return tokens, text, spec, targets, warnings


def _target(lm, target: str, model_id: str):
    try:
        ids = lm.tokenizer.encode(target)
    except ValueError as e:
        raise field_error("target", f"{target!r} cannot be encoded ({e})", "a token of this model's vocabulary") \
            from None
    if len(ids) != 1 or not 0 <= ids[0] < lm.model.cfg.d_vocab:
        pieces = [lm.tokenizer.decode([i]) for i in ids]
        raise field_error("target", f"{target!r} is {len(ids)} tokens of {model_id}'s vocabulary ({pieces}), not "
                          f"one", "exactly one token, e.g. its first piece " + (repr(pieces[0]) if pieces else "")
                          + " (with its leading space where the tokenizer has one)")
    return tracing.LogitTarget(ids[0], None, repr(target))


def _refuse_oversized(lm, tcs: dict, n_tokens: int, args: TraceInput, n_logits: int) -> None:
    """The graph's peak memory (`trace_footprint`) against the request budget, before any work: a prompt too long
    names `prompt` with the longest that fits."""
    cfg = lm.model.cfg
    per_token = sum(tc.k if tc.activation == "topk" else tc.width for tc in tcs.values())  # active latents at most
    M = args.max_feature_nodes or 10**12

    def peak(n_tokens: int) -> float:
        n_active = per_token * n_tokens
        rows = n_logits + min(M, n_active)  # a chunk never holds more rows than the graph has
        B = args.batch_size or tracing_graph.chunk_size(lm.model, n_tokens, n_active + (cfg.n_layers + 1) * n_tokens)
        return tracing.trace_footprint(cfg, n_tokens, n_active, min(M, n_active), min(B, rows), n_logits)

    fp = Footprint(peak, {"n_tokens": n_tokens})
    budget = request_budget()
    if fp.total() <= budget:
        return
    fits = largest_fitting(fp, "n_tokens", budget)
    need = gib(fp.total())
    if fits is None:
        raise field_error("max_feature_nodes", f"an attribution graph of even one token needs about {need}, over the "
                          f"{gib(budget)} one request may use", "a smaller max_feature_nodes or batch_size, or free "
                          "memory ($MCP_INTERP_REQUEST_MEMORY_MB sets the budget)")
    raise field_error("prompt", f"its attribution graph ({n_tokens} tokens, up to {per_token * n_tokens} active "
                      f"latents) needs about {need}, over the {gib(budget)} one request may use",
                      f"a prompt of at most {fits} tokens (or a smaller max_feature_nodes; "
                      f"$MCP_INTERP_REQUEST_MEMORY_MB sets the budget)")


# ------------------------------------------------------------------ the corpus of top contexts

def _context_windows(run: ToolRun, lm, args: TraceInput, tokens: list[int], warnings: list[str]) \
        -> tuple[list[list[int]], str]:
    """Token windows for the kept features' top contexts, about contexts_tokens in all, and the corpus's name."""
    corpus = args.contexts_corpus
    if corpus == "auto":
        corpus = "task" if args.task else "shakespeare"
    ctx = min(CONTEXT_WINDOW, lm.model.cfg.n_ctx)
    if corpus == "none":
        return [], "none"
    if corpus == "prompt":
        return [tokens], "prompt"
    if corpus == "task":
        if not args.task:
            raise field_error("contexts_corpus", "'task' needs a task", "contexts_corpus='prompt', 'shakespeare' "
                              "or 'random' (or give task)")
        spec = resolve_task(run.app, args.task)
        ds = dataset(spec, lm.tokenizer, max(8, args.contexts_tokens // max(len(tokens), 1)), args.seed, None,
                     up_to=True)
        windows, total = [], 0
        for e in ds.examples:
            if total >= args.contexts_tokens:
                break
            windows.append(list(e.tokens))
            total += len(e.tokens)
        return windows, f"task:{spec.name}"
    if corpus == "shakespeare":
        try:
            docs = [p.read_text(errors="replace") for p in features.shakespeare_files()]
            return features.token_windows(docs, lm.tokenizer, ctx, args.contexts_tokens, args.seed), "shakespeare"
        except (FileNotFoundError, ValueError) as e:
            if args.contexts_corpus == "shakespeare":
                raise field_error("contexts_corpus", f"the Shakespeare corpus is not readable here ({e})",
                                  "contexts_corpus='random', 'task' or 'prompt'") from None
            warnings.append(f"top contexts come from random tokens: the Shakespeare corpus is not readable for this "
                            f"model ({str(e)[:120]})")
            corpus = "random"
    return features.random_windows(lm.model.cfg.d_vocab, ctx, args.contexts_tokens, args.seed), "random"


# ------------------------------------------------------------------ the work

def _trace(run: ToolRun, args: TraceInput) -> tuple[TraceResult, dict]:
    lm = run.load(args.model)
    model = lm.model
    try:
        tracing.check_model(model)
    except ValueError as e:
        raise ToolError(str(e) if str(e).startswith("model") else f"model: {e}") from None
    dirs = transcoder_sets.transcoder_dirs(run.app, args.transcoders, progress=run.job.reporter(0.01, 0.03))
    tcs = transcoder_sets.load_transcoder_set(dirs, lm)
    tokens, text, spec, targets, warnings = _prompt(run, lm, args)
    n_logits = len(targets) if targets else args.max_n_logits
    _refuse_oversized(lm, tcs, len(tokens), args, n_logits)
    tok = lm.tokenizer
    token_str = lambda i: tok.decode([i])  # noqa: E731
    windows, corpus = _context_windows(run, lm, args, tokens, warnings)
    with lm.use():
        try:
            study = tracing.trace(model, torch.tensor(tokens), tcs, targets, node_threshold=args.node_threshold,
                                  edge_threshold=args.edge_threshold, max_feature_nodes=args.max_feature_nodes,
                                  batch_size=args.batch_size, max_n_logits=args.max_n_logits,
                                  desired_logit_prob=args.desired_logit_prob, n_paths=args.n_paths,
                                  check_top=args.check_top, intervention_factor=args.intervention_factor,
                                  context_windows=windows, n_contexts=args.n_contexts, token_str=token_str,
                                  progress=run.span(0.03, 0.9), should_cancel=run.should_cancel)
        except ValueError as e:
            raise ToolError(str(e).replace("targets:", "target:", 1)) from None
    g, pruned, probs, check, tops = study.graph, study.pruned, study.probs, study.check, study.contexts
    ids = graph_json_m.node_ids(g, model.cfg.d_vocab)
    feats = [_feature_node(g, pruned, i, ids, tops.get((int(g.features[i, 0]), int(g.features[i, 2])), []), windows,
                           token_str) for i in study.kept]
    if spec is not None:
        run.open(spec, args.model, lm, args.seed)
    else:
        run.open_untasked("prompts", args.model, lm, args.seed)
    run.publish("result.json")
    gj = _store(run, args, g, pruned, study, text, probs, feats, ids, check, dirs, corpus, model.cfg.d_vocab)
    result = _result(run, args, lm, g, pruned, study, text, probs, feats, ids, check, dirs, corpus, spec, warnings, gj)
    return result, {"replacement_score": result.replacement_score, "completeness_score": result.completeness_score,
                    "kept_nodes": result.kept_nodes,
                    "intervention_r": None if check is None else result.intervention_check.pearson}


def _feature_node(g, pruned, i: int, ids: list[str], tops, windows, token_str) -> FeatureNode:
    l, p, f = (int(v) for v in g.features[i])
    return FeatureNode(node_id=ids[i], layer=l, latent=f, position=p, token=g.token_labels[p],
                       activation=float(g.activations[i]), influence=float(pruned.influence[i]),
                       contexts=[ContextRow(text=contexts_m.context_text(windows[c.window], c.position, token_str),
                                            activation=c.activation, window=c.window, position=c.position)
                                 for c in tops])


def _store(run: ToolRun, args: TraceInput, g, pruned, study, text: str, probs, feats: list[FeatureNode],
           ids: list[str], check, dirs: list[Path], corpus: str, d_vocab: int) -> dict:
    """graph.json (circuit-tracer's schema) + graph-metadata.json, graph.safetensors (the full adjacency and its
    node order), trace.json (everything else), graph.html and graph.png (the main figure)."""
    by_node = {f.node_id: f for f in feats}
    clerps = {i: _clerp(by_node[ids[i]]) for i in range(g.n_features) if ids[i] in by_node}
    slug = f"trace-{run.run_id}"
    scan = args.transcoders if isinstance(args.transcoders, str) else "+".join(args.transcoders)
    gj = graph_json_m.graph_json(
        g, pruned, slug=slug, scan=scan, prompt=text, d_vocab=d_vocab,
        probs=probs, clerps=clerps, transcoder_list=[str(d) for d in dirs], node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold, generation_settings={
            "max_n_logits": args.max_n_logits, "desired_logit_prob": args.desired_logit_prob,
            "batch_size": args.batch_size, "max_feature_nodes": args.max_feature_nodes})
    run.write_json("graph.json", gj)
    run.write_json("graph-metadata.json", graph_json_m.graph_metadata(gj))
    tensors = {"adjacency": g.adjacency, "constants": g.constants, "features": g.features,
               "activations": g.activations, "tokens": g.tokens, "error_norms": g.error_norms,
               "influence": pruned.influence, "cumulative_influence": pruned.cumulative, "node_mask": pruned.node_mask,
               "edge_mask": pruned.edge_mask, "target_values": g.target_values, "target_weights": g.target_weights,
               "target_tokens": torch.tensor([t.token for t in g.targets]),
               "target_counterfactuals": torch.tensor([-1 if t.counterfactual is None else t.counterfactual
                                                       for t in g.targets])}
    if g.dropped is not None:
        tensors["dropped"] = g.dropped
    run.write_tensors("graph.safetensors", tensors)
    run.write_json("trace.json", {
        "node_ids": ids, "node_labels": [g.label(i) for i in range(g.n_nodes)],
        "layout": {"features": g.n_features, "errors": g.n_errors, "tokens": g.n_tokens, "logits": g.n_logits,
                   "error_layers": list(g.error_layers)},
        "summary": study.summary(), "paths": [{"text": p.text(), "score": p.score, "nodes": [ids[i] for i in p.nodes]}
                                              for p in study.paths],
        "features": [f.model_dump() for f in feats], "contexts_corpus": corpus,
        "intervention_check": None if check is None else {
            "factor": check.factor, "target": check.target_label, "clean_value": check.clean_value,
            "pearson": check.pearson, "ci95": list(check.ci95), "n": check.n,
            "rows": [{"node_id": ids[r.node], **{k: getattr(r, k) for k in (
                "label", "layer", "position", "latent", "activation", "influence", "predicted", "measured")}}
                for r in check.rows]}})
    ctx = {f.node_id: [{"text": c.text, "activation": c.activation} for c in f.contexts] for f in feats}
    title = f"{args.model}: {text!r} -> {', '.join(g.target_labels[:3])}"
    run.write_bytes("graph.html", graph_view.graph_html(gj, ctx, title).encode())
    fig = graph_view.graph_figure(gj, f"attribution graph (pruned: {len(gj['nodes'])} nodes, {len(gj['links'])} "
                                      f"edges), replacement {study.replacement_score:.2f}, completeness "
                                      f"{study.completeness_score:.2f}\n{title}")
    run.save_figure("graph.png", fig, main=True)
    if check is not None and check.rows:
        run.write_json("interventions.json", [{"node_id": ids[r.node], "predicted": r.predicted,
                                               "measured": r.measured} for r in check.rows])
    return gj


def _clerp(f: FeatureNode) -> str:
    """A feature node's label in the viewers: where it is, and its strongest context."""
    top = f" — top context {f.contexts[0].text!r}" if f.contexts else ""
    return f"L{f.layer} #{f.latent} @{f.position} {f.token!r}{top}"


def _result(run: ToolRun, args: TraceInput, lm, g, pruned, study, text: str, probs, feats: list[FeatureNode],
            ids: list[str], check, dirs: list[Path], corpus: str, spec, warnings: list[str], gj: dict) -> TraceResult:
    tok = lm.tokenizer
    targets = [TargetRow(label=g.target_labels[k], token=t.token, counterfactual=t.counterfactual,
                         value=float(g.target_values[k]), probability=probs[k], weight=float(g.target_weights[k]))
               for k, t in enumerate(g.targets)]
    paths = [PathRow(text=p.text(), score=p.score, nodes=[ids[i] for i in p.nodes]) for p in study.paths]
    ic = None
    if check is not None:
        ic = InterventionCheck(factor=check.factor, target=check.target_label, clean_value=check.clean_value,
                               rows=[CheckRow(node_id=ids[r.node], label=r.label, activation=r.activation,
                                              influence=r.influence, predicted=r.predicted, measured=r.measured)
                                     for r in check.rows],
                               pearson=check.pearson, ci95=list(check.ci95), n=check.n,
                               max_abs_error=check.max_abs_error())
    n_kept_feats = int(pruned.node_mask[:g.n_features].sum())
    result = TraceResult(
        run_id=run.run_id, model=args.model, prompt=text, tokens=[tok.decode([int(t)]) for t in g.tokens],
        task=spec.name if spec is not None else None, example=args.example if spec is not None else None,
        targets=targets, transcoders=[str(d) for d in dirs], n_active_features=g.n_active,
        n_feature_nodes=g.n_features, n_error_nodes=g.n_errors, n_nodes=g.n_nodes, kept_nodes=len(gj["nodes"]),
        kept_edges=len(gj["links"]), kept_feature_nodes=n_kept_feats, node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold, replacement_score=study.replacement_score,
        completeness_score=study.completeness_score, identity_error=study.identity_error, paths=paths,
        features=feats[:MAX_RESULT_FEATURES], contexts_corpus=corpus, intervention_check=ic,
        html_path=run.final_path("graph.html"), summary="", warnings=[], files=run.files,
        cost=run.cost({"graph_seconds": study.graph.seconds, "rows": study.graph.rows,
                       "check_forwards": 0 if check is None else check.forwards}))
    result.warnings = warnings + _warnings(args, result, g)
    result.summary = _summary(args, result)
    return result


def _warnings(args: TraceInput, r: TraceResult, g) -> list[str]:
    w = []
    if r.replacement_score is not None and r.replacement_score < 0.5:
        w.append(f"replacement score {r.replacement_score:.2f}: most of the inputs' influence reaches the targets "
                 f"through error nodes (what the transcoders miss); read the feature paths as a partial account")
    if r.n_feature_nodes < r.n_active_features:
        w.append(f"{r.n_active_features - r.n_feature_nodes} of {r.n_active_features} active latents were left out "
                 f"by max_feature_nodes={args.max_feature_nodes} (the least influential); their edges are not in "
                 f"the graph")
    if r.identity_error is not None and r.identity_error > 1e-3 * max(1.0, max(abs(t.value or 0) for t in r.targets)):
        w.append(f"the edges do not add up to the node values (identity error {r.identity_error:.2g}): the frozen "
                 f"linear model does not reproduce this model exactly")
    ic = r.intervention_check
    if ic is not None:
        if ic.pearson is None:
            w.append(f"the intervention check's correlation is undefined (n={ic.n}; fewer than 4 features or one "
                     f"side constant): read its table")
        elif ic.pearson < 0.5:
            w.append(f"the graph predicts the interventions poorly (r = {ic.pearson:.2f}, n={ic.n}): its edges are "
                     f"first-order; try intervention_factor=0.5 for smaller edits")
    if not r.features:
        w.append("no feature node survived pruning: the targets are reached through tokens and error nodes only")
    return w


def _summary(args: TraceInput, r: TraceResult) -> str:
    names = ", ".join(t.label for t in r.targets[:3]) + (" …" if len(r.targets) > 3 else "")
    head = (f"Traced {r.prompt!r} ({len(r.tokens)} tokens) of {args.model} to {names}: {r.kept_nodes} of "
            f"{r.n_nodes} nodes kept "
            f"({r.kept_feature_nodes} features), {r.kept_edges} edges; replacement score "
            f"{_f(r.replacement_score)}, completeness {_f(r.completeness_score)}. ")
    path = f"Top path: {r.paths[0].text}. " if r.paths else "No path reaches the targets. "
    ic = r.intervention_check
    check = ""
    if ic is not None and ic.rows:
        rr = "undefined" if ic.pearson is None else f"{ic.pearson:.2f} [{_f(ic.ci95[0])}, {_f(ic.ci95[1])}]"
        check = (f"Intervention check ({'zero-ablation' if ic.factor == 0 else f'activation x {ic.factor:g}'} of "
                 f"the top {ic.n} features in the real model): predicted vs measured change of {ic.target}, Pearson "
                 f"r = {rr} (n={ic.n}). ")
    if r.features:
        f = r.features[0]
        nxt = (f"Next: open {r.html_path} in a browser (hover a feature for its contexts), or steer(model="
               f"'{args.model}', intervention={{kind: 'feature', source: 'sae', sae: '{r.transcoders[f.layer]}', "
               f"index: {f.latent}}}) to test the top feature L{f.layer} #{f.latent} in generation.")
    else:
        nxt = ("Next: better transcoders (train_transcoders with a larger width or more tokens), then trace again; "
               "or lower node_threshold.")
    return head + path + check + nxt


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def trace(app: AppContext, args: TraceInput, progress: Progress | None = None) -> TraceOutput:
    if (args.task is None) == (args.prompt is None):
        raise ToolError("prompt: give a prompt or a task (not both, not neither). Fix: prompt='...' or "
                        "task='<name>' (list_tasks) with example=<index>.")
    # refused before the run cache, a job or a model load
    transcoder_sets.transcoder_dirs(app, args.transcoders, fetch=False)
    label = resolve_task(app, args.task).name if args.task else "prompts"
    what = args.prompt if args.prompt is not None else f"{args.task}[{args.example}]"
    return run_heavy(app, TOOL, args, label, args.model, f"trace {what!r} on {args.model}", _trace, TraceOutput,
                     progress)


TRACE = ToolSpec(
    TOOL, fn=trace, input_model=TraceInput, output_model=TraceOutput, progress=True,
    description=(
        "Attribution graph of one prompt (circuit tracing): every MLP replaced by its transcoder (one per layer: a "
        "train_transcoders run id or folders), attention patterns and norms frozen, the direct effect between every "
        "pair of active features, error nodes, tokens and target logits; pruned by influence (node / edge "
        "thresholds 0.8 / 0.98). Target: one token's logit, a task example's answer-minus-counterfactual logit "
        "difference, or the most likely next tokens. Reports the replacement and completeness scores, the top paths "
        "in words, each kept feature's top-activating contexts on a small corpus, and an intervention check: the top "
        "features ablated (or scaled) one at a time in the real model, error term kept, predicted vs measured change "
        "with Pearson r. Stores the graph as circuit-tracer / Neuronpedia JSON, the full adjacency (safetensors), an "
        "interactive HTML view (html_path) and a PNG. On models with norms after each sublayer (Gemma 2/3) the "
        "transcoders must predict hook_mlp_out (train_transcoders' do). Refuses OLMo 2/3 (no norm before the MLP), "
        "missing or mismatched transcoders, a target that is not one token, a prompt over the memory budget. Runs "
        "as a job."))
