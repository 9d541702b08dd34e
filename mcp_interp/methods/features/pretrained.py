"""Pretrained SAEs by name: the sae-lens registry (shipped inside the sae-lens wheel, readable offline) and the
download of one SAE through the hub, with byte progress.

A release (e.g. `gpt2-small-res-jb`, `gemma-scope-2b-pt-res`) is a hub repository holding many SAEs, each under
its own path; sae-lens knows which loader reads each release's format. We fetch the files under the SAE's path
ourselves first (progress, cancellation, the hub's errors said plainly), then let sae-lens read them from the cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ...models import ModelLoadError, hub

WIDTH_RE = re.compile(r"width[_-]?(\d+)([km]?)", re.IGNORECASE)


@dataclass(frozen=True)
class PretrainedSAE:
    release: str
    sae_id: str
    repo_id: str
    path: str
    model: str  # the model the release names (sae-lens' / TransformerLens' spelling)
    width: int | None
    expected_l0: float | None
    expected_variance_explained: float | None
    neuronpedia_id: str | None
    loader: str  # sae-lens' conversion function, "sae_lens" for its own format
    model_kwargs: dict[str, Any] | None  # how the release's model was loaded when the SAE was trained

    def cached(self) -> bool:
        """Whether the SAE's files are in the local HF cache (any revision)."""
        snaps = hub.repo_folder(self.repo_id) / "snapshots"
        return snaps.is_dir() and any((s / self.path).exists() for s in snaps.iterdir())


def registry() -> dict[str, Any]:
    """sae-lens' directory of pretrained releases (parsed once per process)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def _width(*texts: str) -> int | None:
    for t in texts:
        m = WIDTH_RE.search(t or "")
        if m:
            return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2}[m.group(2).lower()]
    return None


def _same_model(a: str, b: str) -> bool:
    def key(x: str) -> str:
        return (hub.official_name(x) or x).lower()
    return key(a) == key(b)


def pretrained_saes(model_id: str | None = None, release: str | None = None) -> list[PretrainedSAE]:
    """Every registry SAE, or those of one model (any spelling TransformerLens knows, or a hub id) and/or release."""
    want = hub.hub_name(model_id) or model_id if model_id else None
    out = []
    for name, r in sorted(registry().items()):
        if release is not None and name != release:
            continue
        if want is not None and not _same_model(r.model, want):
            continue
        overrides = r.config_overrides if isinstance(r.config_overrides, dict) else {}
        kwargs = overrides.get("model_from_pretrained_kwargs") if isinstance(overrides, dict) else None
        for sae_id, path in r.saes_map.items():
            out.append(PretrainedSAE(
                release=name, sae_id=sae_id, repo_id=r.repo_id, path=str(path), model=r.model,
                width=_width(sae_id, str(path), name), expected_l0=(r.expected_l0 or {}).get(sae_id) or None,
                expected_variance_explained=(r.expected_var_explained or {}).get(sae_id),
                neuronpedia_id=(r.neuronpedia_id or {}).get(sae_id), loader=r.conversion_func or "sae_lens",
                model_kwargs=kwargs if isinstance(kwargs, dict) and kwargs else None))
    return out


def find(release: str, sae_id: str | None) -> PretrainedSAE:
    """One registry SAE; ModelLoadError naming the close releases / ids when it is not there."""
    reg = registry()
    if release not in reg:
        close = hub.suggestions(release, list(reg))
        raise ModelLoadError(f"release {release!r} is not in the sae-lens registry."
                             + (f" Did you mean: {', '.join(close)}?" if close else "")
                             + " Fix: list_saes(model=...) lists the releases for a model.")
    ids = list(reg[release].saes_map)
    if not sae_id or sae_id not in reg[release].saes_map:
        close = hub.suggestions(sae_id or "", ids, n=5) if sae_id else []
        raise ModelLoadError(f"sae_id {sae_id!r} is not in release {release!r} ({len(ids)} SAEs, e.g. "
                             f"{', '.join(ids[:4])})." + (f" Did you mean: {', '.join(close)}?" if close else "")
                             + f" Fix: list_saes(release='{release}') lists them all.")
    return next(s for s in pretrained_saes(release=release) if s.sae_id == sae_id)


def in_registry(release: str) -> bool:
    return release in registry()


def fetch_folder(repo_id: str, folder: str, progress=None, offline: bool | None = None):
    """A folder of a hub repository that is not a registry release (e.g. EleutherAI's sparsify SAEs and
    transcoders, one `layers.L.mlp` folder each), fetched into the HF cache: its local path."""
    ref = hub.parse(repo_id)
    if ref is None or "/" not in ref.repo_id or not folder or ".." in folder.split("/"):
        raise ModelLoadError(f"release {repo_id!r} is neither a sae-lens registry release nor a hub repository "
                             f"(org/name) with sae_id naming a folder in it. Fix: list_saes lists the releases.")
    offline = hub.env_offline() if offline is None else offline
    commit = hub.cached_commit_any(ref) if offline else None
    if offline:
        if commit is None or not (hub.snapshot_dir(ref.repo_id, commit) / folder / "cfg.json").is_file():
            raise ModelLoadError(f"{repo_id}/{folder} is not in the local Hugging Face cache and the server is "
                                 f"offline. Fix: fetch it once with network access.")
    else:
        commit = _download(hub.plan_files(ref, folder), progress, f"{repo_id} has no folder {folder!r} (sae_id "
                           f"names the folder of one SAE or transcoder, e.g. layers.5.mlp).")
    return hub.snapshot_dir(ref.repo_id, commit) / folder


def _download(plan, progress, nothing: str) -> str:
    """Fetch what `plan` is missing (disk space checked first): its commit. ModelLoadError(nothing) when it is
    empty."""
    if not plan.files:
        raise ModelLoadError(nothing)
    hub.check_disk(plan)
    if plan.missing:
        hub.download(plan, progress)
    return plan.commit


TRANSCODER_FOLDER = r"layers[._]\d+[._]mlp"  # sparsify's layout: one folder per MLP layer
TRANSCODER_FILES = ("cfg.json", "sae.safetensors")


def fetch_transcoder_set(repo_id: str, progress=None, offline: bool | None = None) -> list:
    """Every transcoder folder (`layers.L.mlp`, sparsify's layout, e.g. EleutherAI's skip transcoders of
    SmolLM2-135M) of hub repository `repo_id`, fetched into the HF cache (only cfg.json and sae.safetensors of
    each): their local paths, in layer order. ModelLoadError saying why when there are none or it cannot fetch."""
    ref = hub.parse(repo_id)
    if ref is None or "/" not in ref.repo_id:
        raise ModelLoadError(f"{repo_id!r} is not a hub repository id (org/name).")
    offline = hub.env_offline() if offline is None else offline
    if offline:
        commit = hub.cached_commit_any(ref)
        root = None if commit is None else hub.snapshot_dir(ref.repo_id, commit)
        if root is None or not root.is_dir():
            raise ModelLoadError(f"{repo_id} is not in the local Hugging Face cache and the server is offline. Fix: "
                                 f"fetch it once with network access.")
    else:
        commit = _download(hub.plan_folders(ref, TRANSCODER_FOLDER, TRANSCODER_FILES), progress,
                           f"{repo_id} holds no transcoder folders (layers.L.mlp with cfg.json, as sparsify saves "
                           f"them). Fix: a repository of such folders, or load_sae for other layouts.")
        root = hub.snapshot_dir(ref.repo_id, commit)
    found = sorted((d for d in root.iterdir() if d.is_dir() and re.fullmatch(TRANSCODER_FOLDER, d.name)
                    and (d / "cfg.json").is_file()), key=lambda d: int(re.findall(r"\d+", d.name)[0]))
    if not found:
        raise ModelLoadError(f"{repo_id}: no transcoder folder (layers.L.mlp with cfg.json) in the cached snapshot.")
    return found


def fetch(entry: PretrainedSAE, progress=None, offline: bool | None = None):
    """Download the SAE's files (those missing from the cache) and load it with sae-lens: the SAE object."""
    from sae_lens import SAE

    offline = hub.env_offline() if offline is None else offline
    ref = hub.HubRef(entry.repo_id)
    if offline:
        if not entry.cached():
            raise ModelLoadError(f"SAE {entry.release}/{entry.sae_id} is not in the local Hugging Face cache "
                                 f"({hub.hub_cache()}) and the server is offline, so it cannot be downloaded. Fix: "
                                 f"fetch it once with network access, or pass `path` to a local sae-lens directory.")
    else:
        plan = hub.plan_files(ref, entry.path)
        hub.check_disk(plan)
        if plan.missing:
            hub.download(plan, progress)
    try:
        return SAE.from_pretrained(entry.release, entry.sae_id, device="cpu")
    except Exception as e:
        raise ModelLoadError(f"sae-lens could not read {entry.release}/{entry.sae_id} from {entry.repo_id} "
                             f"({type(e).__name__}: {str(e)[:300]})") from e
