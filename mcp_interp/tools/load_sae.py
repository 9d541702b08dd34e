"""Tool load_sae: bring any sae-lens SAE directory into the store, checked against the model's site."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from .. import lazy
from ..methods import features
from ..methods.core import Progress, Site
from ..methods.core.footprint import Footprint
from ..methods.features import pretrained
from ..models import ModelLoadError
from ..tasks.spec import TaskSpec
from .base import LOADED, HeavyInput, HeavyOutput, RunResult, ToolRun, ToolSpec, run_heavy
from .budget import refuse_oversized
from .common import DEFAULT_MODEL, SaeQuality, dataset, resolve_task
from .errors import ToolError, field_error

if TYPE_CHECKING:
    from ..runtime.context import AppContext

plots = lazy("mcp_interp.artifacts.plots")  # matplotlib: imported on the first call, not at server start

TOOL = "load_sae"


def local_path(app: AppContext, field: str, raw: str, fix: str) -> Path:
    """A path a client names, resolved and confined to the server's local roots (ModelPool.confine): outside them, one
    refusal whether or not anything exists there, so nothing is learnt (or read, or copied into the store) from
    files the server does not offer."""
    path = app.pool.confine(raw) if raw.strip() else None
    if path is None:
        raise field_error(field, app.pool.outside_roots(), fix)
    return path


def sae_directory(app: AppContext, ref: str, field: str = "sae") -> Path:
    """The sae-lens directory behind `ref`: a train_sae / load_sae run id, `<run id>/layers.L.mlp` (one transcoder of
    a train_transcoders run), or a directory path (confined to the local roots)."""
    run_id, _, folder = ref.partition("/")
    try:
        rec = app.store.get_run(run_id)
    except Exception:
        rec = None
    if rec is not None:
        if folder:  # one layer's folder of a run (a train_transcoders run holds one per layer)
            names = [n.split("/")[0] for n in app.store.list_files(run_id) if n.startswith("layers.")]
            if folder not in names:
                raise field_error(field, f"run {run_id} ({rec.tool}) has no folder {folder!r}",
                                  f"one of {', '.join(sorted(set(names))) or '(none: it holds no transcoders)'}")
            return app.store.run_dir(run_id) / folder
        d = app.store.run_dir(ref) / "sae"
        if not (d / "cfg.json").is_file():
            raise ToolError(f"{field}: run {ref} ({rec.tool}) holds no SAE; pass a train_sae or load_sae run id, or "
                            f"`<train_transcoders run id>/layers.L.mlp` for one of its transcoders.")
        return d
    fix = ("a train_sae / load_sae run id (list_runs(tool='train_sae')), `<train_transcoders run id>/layers.L.mlp`, "
           "or the path of a sae-lens directory (cfg.json + sae_weights.safetensors)")
    p = local_path(app, field, ref, fix + " under them (or start the server with --model-root)")
    if not p.is_dir():
        raise field_error(field, f"{ref!r} is neither a stored run id nor a directory", fix)
    return p


def site_of_hook(model, hook: str | None) -> Site:
    """The feature site an SAE's hook name names (checked against the model)."""
    if not hook:
        raise ToolError("sae: its cfg.json names no hook (metadata.hook_name); cannot tell where it reads.")
    if hook not in model.hook_dict:
        raise ToolError(f"sae: hook {hook!r} does not exist in this model (it has blocks 0..{model.cfg.n_layers - 1}).")
    parts = hook.split(".")
    kinds = {"hook_resid_pre": "resid_pre", "hook_resid_post": "resid_post", "hook_attn_out": "attn_out",
             "hook_mlp_out": "mlp_out"}
    if len(parts) == 3 and parts[0] == "blocks" and parts[2] in kinds:
        return Site(kinds[parts[2]], int(parts[1]))
    raise ToolError(f"sae: hook {hook!r} is not a supported feature site (blocks.L.hook_resid_pre / resid_post / "
                    f"attn_out / mlp_out).")


def checked_sae(app: AppContext, ref: str, lm) -> tuple[object, Site, Path]:
    """Load the SAE behind `ref` (a run id or a local directory) and check it fits `lm`'s model: (sae, site,
    directory)."""
    return checked_sae_dir(sae_directory(app, ref), lm)


def checked_sae_dir(d: Path, lm) -> tuple[object, Site, Path]:
    """Load the SAE (or transcoder) in directory `d` and check it fits `lm`'s model: (sae, site, d)."""
    if features.is_transcoder_dir(d):
        return (*checked_transcoder(d, lm), d)
    try:
        sae = features.load_sae(d, device=lm.device)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise ToolError(f"sae: {e}") from None
    site = site_of_hook(lm.model, features.sae_hook_name(sae))
    want = site.dim(lm.model)
    if int(sae.cfg.d_in) != want:
        raise ToolError(f"sae: d_in = {sae.cfg.d_in} but {site.hook} of this model has width {want}: the SAE was "
                        f"trained on another model.")
    return sae, site, d


def checked_transcoder(d: Path, lm) -> tuple[object, Site]:
    """A transcoder directory's (feature source, read site), checked against `lm`'s model."""
    model = lm.model
    try:
        tc, layer, convention = features.load_transcoder(d, device=lm.device)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise ToolError(f"sae: {e}") from None
    if not 0 <= layer < model.cfg.n_layers or model.cfg.attn_only:
        raise ToolError(f"sae: the transcoder is of MLP {layer}, but this model has MLPs 0..{model.cfg.n_layers - 1}"
                        if not model.cfg.attn_only else "sae: this model has no MLPs to transcode")
    d_in, _, d_out = features.transcoder_width(tc)
    if (d_in, d_out) != (model.cfg.d_model, model.cfg.d_model):
        raise ToolError(f"sae: the transcoder maps {d_in} -> {d_out} but this model's MLPs map {model.cfg.d_model} "
                        f"-> {model.cfg.d_model}: it belongs to another model.")
    try:
        source = features.TranscoderFeatures(tc, layer, convention, model)
    except ValueError as e:
        raise ToolError(f"sae: {e}") from None
    return source, source.site


def stored_files(d: Path, transcoder: bool) -> dict[str, bytes]:
    """The files a load_sae run keeps, by name under sae/: a sparsify folder's cfg.json gains its layer (its folder
    name said it; the store's folder is called sae)."""
    if transcoder and (d / "sae.safetensors").is_file():
        import json

        cfg = json.loads((d / "cfg.json").read_text())
        cfg.setdefault("layer", features.load_transcoder(d)[1])
        return {"cfg.json": json.dumps(cfg).encode(), "sae.safetensors": (d / "sae.safetensors").read_bytes()}
    return {n: (d / n).read_bytes() for n in ("cfg.json", "sae_weights.safetensors")}


class LoadSaeInput(HeavyInput):
    model: str = Field(DEFAULT_MODEL, description="Model id the SAE belongs to.")
    path: str | None = Field(None, description="A sae-lens directory (cfg.json + sae_weights.safetensors), under the "
                             "server's local roots when it sets them (over HTTP: its directory, the model cache, "
                             "--model-root); or a train_sae / load_sae run id.")
    release: str | None = Field(None, description="Instead of path: a release of the sae-lens registry (list_saes "
                                "lists them per model), or a hub repository (org/name) of SAE / transcoder folders "
                                "(EleutherAI sparsify's layout); downloaded with progress (offline: from the cache).")
    sae_id: str | None = Field(None, description="With release: the SAE id inside the release (list_saes), or the "
                               "folder inside the repository (e.g. layers.5.mlp).")
    task: str | None = Field(None, description="Optional: measure reconstruction on this task's prompts (all "
                             "positions) and store the run under it.")
    n: int = Field(64, ge=1, le=4096, description="Task prompts for the quality figures.")


class LoadSaeResult(RunResult):
    run_id: str
    model: str
    hook: str
    architecture: str
    d_in: int
    d_sae: int
    source: str
    sae_path: str
    metadata: dict[str, Any] = Field(description="the cfg.json's metadata (sae-lens: hook_name, model_name, ...)")
    quality: SaeQuality | None = Field(None, description="On the task's prompts: explained_variance, mse, l0, dead, "
                                       "dense.")


class LoadSaeOutput(HeavyOutput):
    result: LoadSaeResult | None = None


def _fetch(run: ToolRun, args: LoadSaeInput, warnings: list[str]) -> tuple[Path, str]:
    """(the SAE's directory, where it came from): `path` (a run id or a directory under the local roots), or a
    release, downloaded first."""
    if args.path:
        if args.release:
            raise ToolError("path: give `path` or `release`, not both.")
        return sae_directory(run.app, args.path, "path"), args.path
    if not args.release:
        raise ToolError("path: give `path` (a sae-lens directory) or `release` (+ sae_id).")
    progress, offline = run.span(LOADED, 0.5), run.app.pool.offline
    try:
        if not pretrained.in_registry(args.release) and "/" in args.release:
            # a hub repository of SAE / transcoder folders (EleutherAI sparsify's layout), not a registry release
            folder = pretrained.fetch_folder(args.release, args.sae_id or "", progress=progress, offline=offline)
            return Path(folder), f"hub {args.release}/{args.sae_id}"
        entry = pretrained.find(args.release, args.sae_id)
        sae = pretrained.fetch(entry, progress=progress, offline=offline)
    except ModelLoadError as e:
        raise ToolError(f"release: {e}") from None
    if entry.model_kwargs:
        warnings.append(f"{entry.release} was trained on the model loaded with {entry.model_kwargs} "
                        f"(TransformerLens weight processing); models here load unprocessed, so expect lower "
                        f"reconstruction quality unless that processing leaves this site unchanged.")
    import tempfile

    tmp = tempfile.mkdtemp()  # sae-lens' own format, whatever the release's was
    features.save_sae(sae, tmp)
    return Path(tmp), f"release {entry.release}/{entry.sae_id} ({entry.repo_id}/{entry.path})"


def _load(run: ToolRun, args: LoadSaeInput) -> tuple[LoadSaeResult, dict]:
    lm = run.load(args.model)
    warnings: list[str] = []
    d, source = _fetch(run, args, warnings)
    sae, site, d = checked_sae_dir(d, lm)
    transcoder = isinstance(sae, features.TranscoderFeatures)
    quality = None
    spec: TaskSpec | None = resolve_task(run.app, args.task) if args.task else None
    if spec is not None and transcoder:
        warnings.append("quality on task prompts is measured for SAEs; a transcoder's (MLP output explained) is not "
                        "computed here")
        spec = None
    if spec is not None:
        ds = dataset(spec, lm.tokenizer, args.n, args.seed, None)
        per_prompt = max(len(e.tokens) for e in ds.examples)
        width = (int(sae.cfg.d_in), int(sae.cfg.d_sae))
        refuse_oversized(Footprint(lambda n: features.evaluation_footprint(*width, n * per_prompt), {"n": args.n}),
                         f"measuring the SAE on prompts of up to {per_prompt} tokens")
        with lm.use():
            acts = features.collect_activations(lm.model, site, [e.tokens for e in ds.examples], progress=run.span(),
                                         should_cancel=run.should_cancel)
        quality = features.reconstruction_stats(sae, acts.acts)
        rate = quality.pop("firing_rate")
        run.open(spec, args.model, lm, args.seed)
    else:
        run.open_untasked("sae", args.model, lm, args.seed)
    for name, data in stored_files(Path(d), transcoder).items():
        run.write_bytes(f"sae/{name}", data)
    run.publish("result.json")
    if quality:
        run.save_figure("firing_rates.png", plots.firing_rates(rate, quality["dead"], quality["dense"],
                                                               f"{args.task}, all positions"), main=True)
    if transcoder:
        d_in, d_sae, _ = features.transcoder_width(sae.tc)
        arch = ("sparsify_" if isinstance(sae.tc, features.SparsifyTranscoder) else "") + (
            features.sae_architecture(sae.tc) if not isinstance(sae.tc, features.SparsifyTranscoder) else
            "skip_transcoder" if sae.tc.W_skip is not None else "transcoder")
        meta = {"reads": site.hook, "writes": sae.write_site.hook, "input": sae.convention}
        summary = f"{arch} {d_in} -> {d_sae} latents -> {sae.write_site.hook}, reading {site.hook}"
    else:
        d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
        meta = {k: v for k, v in sae.cfg.metadata.to_dict().items()
                if isinstance(v, (str, int, float, bool)) or v is None}
        arch = features.sae_architecture(sae)
        summary = f"{arch} SAE {d_in} -> {d_sae} at {site.hook}"
    summary += f", checked against {args.model}"
    if quality:
        summary += f"; on {args.task}: explained variance {quality['explained_variance']:.3f}, L0 {quality['l0']:.1f}"
    summary += (f". Next: find_features(source='sae', sae='{run.run_id}', task=..., variable=...) for latents that "
                f"track a task variable")
    result = LoadSaeResult(run_id=run.run_id, model=args.model, hook=site.hook, architecture=arch,
                           d_in=d_in, d_sae=d_sae, source=source,
                           sae_path=run.final_path("sae"), metadata=meta, quality=quality, summary=summary,
                           warnings=warnings, files=run.files, cost=run.cost({}))
    return result, {"hook": site.hook, "d_sae": d_sae}


def load_sae(app: AppContext, args: LoadSaeInput, progress: Progress | None = None) -> LoadSaeOutput:
    if args.path:
        sae_directory(app, args.path, "path")  # refused before the run cache, a job or a model load
    return run_heavy(app, TOOL, args, args.task or "sae", args.model, f"load_sae {args.path or args.release}",
                     _load, LoadSaeOutput, progress)


LOAD_SAE = ToolSpec(
    TOOL, fn=load_sae, input_model=LoadSaeInput, output_model=LoadSaeOutput, progress=True, description=(
        "Load an SAE in sae-lens format (a directory with cfg.json + sae_weights.safetensors; or a pretrained SAE "
        "by release and sae_id from the sae-lens registry, see list_saes: downloaded from the hub, with progress) and "
        "check it against the model: d_in must equal the width of the hook "
        "it names (metadata.hook_name), which must exist. Copies it into the store; with `task`, reports "
        "reconstruction quality and a latent firing-rate histogram on the task's prompts. Then: "
        "find_features(source='sae', sae=run_id)."))
