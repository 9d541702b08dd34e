"""The transcoder set a `trace` call names, resolved: run ids, hub repositories of `layers.L.mlp` folders and local
directories to folders (`transcoder_dirs`), then folders to one checked TracingTranscoder per MLP layer
(`load_transcoder_set`), every refusal naming `transcoders` (or `model`) and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import lazy
from ..methods import features
from ..methods.core import Progress
from ..methods.features import pretrained
from ..models import ModelLoadError, hub
from .errors import ToolError, field_error
from .load_sae import local_path, sae_directory

if TYPE_CHECKING:
    from ..runtime.context import AppContext

tracing = lazy("mcp_interp.methods.tracing")


def transcoder_dirs(app: AppContext, refs: str | list[str], fetch: bool = True,
                    progress: Progress | None = None) -> list[Path]:
    """The transcoder folders behind `transcoders`: run ids (train_transcoders: one folder per layer; load_sae: its
    sae/ folder), `<run id>/layers.L.mlp` (one layer of a run), directories (a transcoder folder, or a folder of
    them) confined to the local roots, and hub repositories of `layers.L.mlp` folders (a pretrained set, e.g.
    EleutherAI's), downloaded when `fetch` (in the job; the check before it only recognises the id, or, offline,
    whether it is cached)."""
    refs = [refs] if isinstance(refs, str) else list(refs)
    if not refs:
        raise field_error("transcoders", "no transcoders given", "a train_transcoders run id or directories")
    out: list[Path] = []
    for ref in refs:
        rec = _run(app, ref)
        run_id, _, folder = ref.partition("/")
        if rec is None and folder and _run(app, run_id) is not None:  # <run id>/layers.L.mlp: one layer of a run
            out.append(sae_directory(app, ref, "transcoders"))
            continue
        if rec is not None:
            root = app.store.run_dir(ref)
            found = _transcoder_folders(root)
            if not found:
                raise ToolError(f"transcoders: run {ref} ({rec.tool}) holds no transcoder. Fix: a train_transcoders "
                                f"run id (list_runs(tool='train_transcoders')) or transcoder directories.")
            out += found
            continue
        if "/" in ref and hub.parse(ref) is not None and not Path(ref).exists():  # org/name: a hub set
            if fetch or hub.env_offline():  # offline, the check before the job already knows whether it is cached
                try:
                    found = pretrained.fetch_transcoder_set(ref, progress=progress)
                except ModelLoadError as e:
                    raise ToolError(f"transcoders: {ref!r} is not a local directory here; as a hub repository: "
                                    f"{e}") from None
                out += found if fetch else []
            continue
        fix = ("a train_transcoders / load_sae run id, a hub repository of layers.L.mlp folders (org/name), or a "
               "directory of transcoder folders (layers.L.mlp or sae-lens)")
        p = local_path(app, "transcoders", ref, fix + " under them (or start the server with --model-root)")
        if not p.is_dir():
            raise field_error("transcoders", f"{ref!r} is neither a stored run id nor a directory", fix)
        found = [p] if features.is_transcoder_dir(p) else _transcoder_folders(p)
        if not found:
            raise field_error("transcoders", f"{ref!r} holds no transcoder folder (cfg.json of a transcoder)", fix)
        out += found
    return out


def _run(app: AppContext, run_id: str):
    try:
        return app.store.get_run(run_id)
    except Exception:
        return None


def _transcoder_folders(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and features.is_transcoder_dir(d))


def load_transcoder_set(dirs: list[Path], lm) -> dict:
    """layer -> TracingTranscoder for every MLP layer, refused by name when one is missing, doubled or does not fit."""
    cfg = lm.model.cfg
    if cfg.attn_only:
        raise ToolError("model: it is attention-only: it has no MLPs to transcode, so there is no graph of "
                        "transcoder features to trace.")
    pairs, where = [], {}
    for d in dirs:
        try:
            tc, layer, reads = features.load_transcoder(d, device=str(lm.device))
            features.check_splice(tc, cfg)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise ToolError(f"transcoders: {e}") from None
        if layer in where:
            raise ToolError(f"transcoders: two transcoders for MLP {layer} ({where[layer]} and {d.name}). Fix: one "
                            f"folder per layer.")
        where[layer] = d.name
        pairs.append((layer, (tc, reads)))
    try:
        tcs = tracing.tracing_transcoders(dict(pairs), cfg.d_model, cfg.n_layers)
    except ValueError as e:
        raise ToolError(str(e) if str(e).startswith("transcoders") else f"transcoders: {e}") from None
    missing = [l for l in range(cfg.n_layers) if l not in tcs]
    if missing:
        raise ToolError(f"transcoders: no transcoder for MLP layer(s) {missing} of {cfg.n_layers}; the replacement "
                        f"model replaces every MLP. Fix: train_transcoders(layers={missing}) and pass every layer's "
                        f"folder (or a run holding all {cfg.n_layers}).")
    return tcs
