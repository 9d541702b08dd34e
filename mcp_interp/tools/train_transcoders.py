"""Tool train_transcoders: TopK skip transcoders (MLP input -> MLP output, with a linear skip term) for chosen MLP
layers, trained on activations collected from the model (methods/features/transcoder_fit.py)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, model_validator

from .. import lazy
from ..methods import features
from ..methods.core import Progress
from ..methods.core.footprint import Footprint
from .base import HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import DEFAULT_MODEL, MaybeFloat, resolve_task
from .errors import ToolError
from .train_sae import CorpusInput, CurvePoint, Throughput, corpus_label, corpus_windows

if TYPE_CHECKING:
    from ..methods.features.transcoder_fit import TranscoderFit
    from ..runtime.context import AppContext

plots = lazy("mcp_interp.artifacts.plots")  # matplotlib: imported on the first call, not at server start

TOOL = "train_transcoders"


class TrainTranscodersInput(CorpusInput):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models); not attention-only, not OLMo 2/3 (no norm "
                       "before its MLPs).")
    layers: list[int] = Field(..., min_length=1, max_length=256, description="MLP layers (block indices) to "
                              "transcode; one forward pass per batch collects all of them.")
    width: int | None = Field(None, ge=1, le=1_048_576, description="Latents per transcoder (default 4 x d_model).")
    k: int = Field(32, ge=1, description="Active latents per token (TopK); at most width.")
    n_tokens: int = Field(20_000, ge=64, le=50_000_000, description="Activation rows per layer to collect (cached; "
                          "the held_out fraction of windows is kept for the quality figures, the rest trained on "
                          "for `epochs` passes).")
    epochs: float = Field(8.0, gt=0, le=1000, description="Passes over the cached rows.")
    skip_first: int = Field(1, ge=0, description="Leave each window's first positions out of training and keep "
                            "their real MLP output in the replacement model (a real model's attention sink: its "
                            "MLP output there is massive; circuit-tracer also leaves position 0 out).")
    batch_size: int = Field(256, ge=8, le=65536, description="Rows per step.")
    lr: float = Field(3e-3, gt=0, le=1.0, description="Adam learning rate, cosine-annealed to lr/10 (inputs and "
                      "outputs are scaled to mean norm sqrt(d_model) in training, so one rate suits any model).")
    held_out: float = Field(0.1, gt=0, lt=0.5, description="Fraction of windows held out for the quality figures.")
    splice_windows: int = Field(16, ge=0, le=4096, description="Held-out windows on which the replacement model "
                                "(every requested MLP replaced by its transcoder, no error term) is compared with "
                                "the original (CE loss, KL); 0 skips it.")

    @model_validator(mode="after")
    def _consistent(self):
        if len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
            raise ValueError(f"layers: {self.layers} must list distinct MLP layers (block indices >= 0). Fix: each "
                             f"layer once, e.g. {sorted({max(L, 0) for L in self.layers})}")
        if self.width is not None and self.k > self.width:
            raise ValueError(f"k: {self.k} active latents exceed width {self.width}. Fix: k at most {self.width} "
                             f"(or a larger width)")
        return self


class LayerQuality(BaseModel):
    """One MLP's transcoder on held-out rows (null where undefined)."""
    layer: int
    path: str = Field(description="its folder (EleutherAI sparsify's layout: cfg.json + sae.safetensors): "
                      "load_sae(path=...) or find_features(sae=...) read it")
    reads: str = Field(description="what the encoder reads: the MLP module's input, ln2 of hook_mlp_in")
    writes: str
    explained_variance: MaybeFloat = Field(description="of the MLP output: 1 - SSE / total SS about its mean")
    mse: MaybeFloat
    l0: MaybeFloat = Field(description="mean active latents per row (k unless fewer pre-activations are positive)")
    dead: int = Field(description="latents never active on held-out rows")
    dense: int = Field(description="latents active on more than dense_threshold of held-out rows")
    dense_threshold: float
    n_rows: int
    scales: dict[str, float] = Field(description="what training multiplied the input and output by (folded into "
                                     "the stored weights)")
    learning_curve: list[CurvePoint]


class Replacement(BaseModel):
    """The replacement model on held-out windows: every transcoded MLP replaced, no error term."""
    layers_replaced: list[int]
    ce_original: MaybeFloat
    ce_replacement: MaybeFloat
    ce_zero_ablation: MaybeFloat = Field(description="those MLPs' outputs set to 0 instead (the reference)")
    kl_replacement: MaybeFloat = Field(description="KL(original || replacement) per predicted token, nats")
    kl_zero_ablation: MaybeFloat
    fraction_loss_recovered: MaybeFloat = Field(description="(CE_zero - CE_replacement) / (CE_zero - CE_original)")
    n_tokens: int


class TrainTranscodersResult(RunResult):
    run_id: str
    model: str
    layers: list[int]
    d_model: int
    width: int
    k: int
    corpus: str
    tokens_collected: int
    samples_trained: int = Field(description="rows seen in training, per layer")
    held_out_rows: int
    transcoders: list[LayerQuality]
    replacement: Replacement | None = Field(description="null when splice_windows is 0")
    throughput: Throughput


class TrainTranscodersOutput(HeavyOutput):
    result: TrainTranscodersResult | None = None


def _footprint(args: TrainTranscodersInput, cfg) -> Footprint:
    """Peak memory as a function of the arguments a request can oversize."""
    n = len(args.layers)
    return Footprint(lambda n_tokens, width, batch_size: features.transcoder_training_footprint(
        cfg.d_model, width, n, n_tokens, batch_size, args.held_out, cfg.d_vocab, args.context),
        {"n_tokens": args.n_tokens, "width": args.width or 4 * cfg.d_model, "batch_size": args.batch_size})


def _train(run: ToolRun, args: TrainTranscodersInput) -> tuple[TrainTranscodersResult, dict]:
    lm = run.load(args.model)
    try:
        features.check_transcodable(lm.model, args.layers)
        features.check_shape(args.width or 4 * lm.model.cfg.d_model, args.k)
    except features.FitError as e:
        raise ToolError(f"{e.field}: {e.message}") from None
    refuse_oversized(_footprint(args, lm.model.cfg), f"training {len(args.layers)} transcoder(s)")
    seqs, corpus = corpus_windows(run, lm, args.corpus, args.task, args.files, args.n_tokens, args.context,
                                  args.skip_first, args.seed)
    with lm.use():
        try:
            fit = features.fit_transcoders(
                lm.model, args.layers, seqs, width=args.width, k=args.k, tokens=args.n_tokens, epochs=args.epochs,
                skip_first=args.skip_first, batch_size=args.batch_size, lr=args.lr, held_out=args.held_out,
                splice_windows=args.splice_windows, seed=args.seed, model_name=args.model, device=lm.device,
                progress=run.span(0.03, 0.92), should_cancel=run.should_cancel)
        except features.FitError as e:
            raise ToolError(f"{e.field}: {e.message}") from None
    _store(run, args, lm, corpus, fit)
    layers = [_layer(run, f) for f in fit.layers]
    repl = None if fit.replacement is None else Replacement(**_rounded(fit.replacement))
    t = fit.throughput
    throughput = Throughput(collect_tokens_per_s=round(t["collect_tokens_per_s"], 1),
                            collect_seconds=round(t["collect_seconds"], 2),
                            train_samples_per_s=round(t["train_samples_per_s"], 1),
                            train_seconds=round(t["train_seconds"], 2), device=t["device"])
    result = TrainTranscodersResult(
        run_id=run.run_id, model=args.model, layers=sorted(args.layers), d_model=fit.d_model, width=fit.width, k=fit.k,
        corpus=corpus, tokens_collected=fit.tokens_collected, samples_trained=fit.layers[0].report.samples,
        held_out_rows=fit.held_out_rows, transcoders=layers, replacement=repl, throughput=throughput,
        summary=_summary(fit, layers, repl), warnings=_warnings(args, fit, layers, repl), files=run.files,
        cost=run.cost({}))
    mean_ev = fit.mean_explained_variance
    return result, {"mean_explained_variance": None if mean_ev is None else round(mean_ev, 4),
                    "kl_replacement": None if repl is None else repl.kl_replacement,
                    "layers": ",".join(map(str, sorted(args.layers)))}


def _rounded(d: dict) -> dict:
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in d.items()}


def _layer(run: ToolRun, f) -> LayerQuality:
    q = _rounded(f.quality)
    q.pop("d_sae", None)
    return LayerQuality(layer=f.layer, path=run.final_path(features.folder_name(f.layer)),
                        reads=f"blocks.{f.layer}.ln2(blocks.{f.layer}.hook_mlp_in)",
                        writes=f"blocks.{f.layer}.hook_mlp_out", scales=_rounded(f.scales),
                        learning_curve=[CurvePoint(**c) for c in f.report.curve], **q)


def _store(run: ToolRun, args: TrainTranscodersInput, lm, corpus: str, fit: TranscoderFit) -> None:
    """The run (under the task, or a corpus label): one sparsify folder per layer, quality.json, the figures, the
    learning curves and the held-out firing rates."""
    if corpus.startswith("task:"):
        run.open(resolve_task(run.app, args.task), args.model, lm, args.seed)
    else:
        run.open_untasked(f"corpus-{corpus}", args.model, lm, args.seed)
    for f in fit.layers:
        for name, data in f.files.items():
            run.write_bytes(f"{features.folder_name(f.layer)}/{name}", data)
    run.write_json("quality.json", {"layers": [{"layer": f.layer, **f.quality, "scales": f.scales}
                                               for f in fit.layers], "replacement": fit.replacement,
                                    "width": fit.width, "k": fit.k})
    run.write_json("learning_curves.json", {str(f.layer): f.report.curve for f in fit.layers})
    run.write_tensors("firing_rates.safetensors", {f"layer_{f.layer}": f.firing_rate for f in fit.layers})
    labels = [f.layer for f in fit.layers]
    title = f"TopK skip transcoders, {args.model} ({fit.d_model} -> {fit.width}, k={fit.k})"
    if fit.replacement is not None:
        r = fit.replacement
        title += (f"\nall replaced: CE {r['ce_replacement']:.3f} vs original {r['ce_original']:.3f} (zero-ablated "
                  f"{r['ce_zero_ablation']:.3f}), KL {r['kl_replacement']:.3f}")
    fig = plots.line_plot(labels, fit.quality_series, title=title, xlabel="MLP layer (held-out tokens)",
                          ylabel="fraction")
    run.save_figure("quality_per_layer.png", fig, main=True)
    curves = {f"MLP {f.layer}": [c["explained_variance"] for c in f.report.curve] for f in fit.layers}
    run.save_figure("learning_curves.png", plots.line_plot(
        [c["samples"] for c in fit.layers[0].report.curve], curves, title="held-out explained variance in training",
        xlabel="training samples (rows)", ylabel="explained variance"))
    run.publish("result.json")


def _warnings(args: TrainTranscodersInput, fit: TranscoderFit, layers: list[LayerQuality],
              repl: Replacement | None) -> list[str]:
    warnings = []
    if fit.tokens_collected < args.n_tokens:
        warnings.append(f"the corpus gave {fit.tokens_collected} rows per layer of the {args.n_tokens} asked for")
    for q in layers:
        if q.explained_variance is None or not math.isfinite(q.explained_variance):
            warnings.append(f"MLP {q.layer}: training diverged (explained variance not finite); lower lr")
        elif q.explained_variance < 0.7:
            warnings.append(f"MLP {q.layer}: held-out explained variance only {q.explained_variance:.2f} (more "
                            f"n_tokens, epochs or width)")
        if q.dead > 0.5 * fit.width:
            warnings.append(f"MLP {q.layer}: {q.dead} of {fit.width} latents never fired on held-out rows: a smaller "
                            f"width or more tokens")
    if repl is not None and repl.kl_zero_ablation and repl.kl_replacement is not None \
            and repl.kl_replacement > 0.5 * repl.kl_zero_ablation:
        warnings.append("the replacement model is far from the original (KL over half of zero-ablating the MLPs): "
                        "attribution graphs built on these transcoders would rest mostly on error terms")
    return warnings


def _summary(fit: TranscoderFit, layers: list[LayerQuality], repl: Replacement | None) -> str:
    per = ", ".join(f"MLP {q.layer}: EV {q.explained_variance:.3f}, L0 {q.l0:.1f}, {q.dead} dead"
                    if q.explained_variance is not None else f"MLP {q.layer}: EV n/a" for q in layers)
    s = f"TopK skip transcoders ({fit.d_model} -> {fit.width} latents, k {fit.k}) on held-out tokens: {per}"
    if repl is not None and repl.ce_replacement is not None:
        s += (f"; every one replaced (no error terms): CE {repl.ce_replacement:.3f} vs original "
              f"{repl.ce_original:.3f} (zero-ablated {repl.ce_zero_ablation:.3f}), KL {repl.kl_replacement:.4f}")
    return s + (f". Next: load_sae(path='{layers[0].path}') (or pass that path as find_features(source='sae', "
                f"sae=...)) for features of MLP {layers[0].layer} that track a task variable")


def train_transcoders(app: AppContext, args: TrainTranscodersInput,
                      progress: Progress | None = None) -> TrainTranscodersOutput:
    return run_heavy(app, TOOL, args, corpus_label(app, args), args.model,
                     f"train_transcoders for MLPs {args.layers} of {args.model} ({args.n_tokens} tokens)",
                     _train, TrainTranscodersOutput, progress)


TRAIN_TRANSCODERS = ToolSpec(
    TOOL, fn=train_transcoders, input_model=TrainTranscodersInput, output_model=TrainTranscodersOutput, progress=True,
    description=(
        "Train TopK skip transcoders (a sparse dictionary from an MLP's input to its output, plus a linear skip "
        "term: the building block of attribution graphs) for chosen MLP `layers`. One forward pass per batch "
        "collects every layer's (MLP input, MLP output) pair on a corpus (the Shakespeare plays, the task's prompts, "
        "random tokens for toy models, or your .txt/.jsonl files); each transcoder then trains on its layer "
        "(EleutherAI sparsify's recipe). Stored per layer in sparsify's layout (layers.L.mlp/cfg.json + "
        "sae.safetensors). Reports per layer on held-out tokens: explained variance of the MLP output, L0, dead "
        "latents; and the replacement model (every requested MLP replaced, no error terms): CE loss and KL against "
        "the original, beside zero-ablating those MLPs. Then: load_sae(path=<layer folder>) / find_features(source="
        "'sae', sae=<layer folder>). Runs as a job; identical requests return the stored run."))
