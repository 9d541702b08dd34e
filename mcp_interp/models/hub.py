"""Models on the Hugging Face hub by id: parse the id, resolve its revision, check that it fits, download it.

Ids: `org/name`, `org/name@revision` (a branch, tag or commit), a bare hub name (`gpt2`) and the TransformerLens
official names and aliases (`pythia-70m` is `EleutherAI/pythia-70m`). Everything goes through `huggingface_hub`
into the standard HF cache, so a model downloaded here is shared with transformers and every other tool.

What a download takes: config, tokenizer files and safetensors weights at the top of the repo; pickled `.bin`
weights only when the caller allows them (`MCP_INTERP_ALLOW_PICKLE=1`), since unpickling runs code. Before any
byte moves, the hub's file sizes are checked against the free disk and the model's memory against the pool's
budget. Downloads are resumable (`huggingface_hub` keeps `.incomplete` files and resumes them with a Range
request), report bytes, rate and ETA through a progress callback, and stop when that callback raises.

Offline (`HF_HUB_OFFLINE=1`, or the pool's `offline` flag): no network at all; a cached revision loads, anything
else is refused saying "offline". The endpoint (`HF_ENDPOINT`) and the token (`HF_TOKEN` or `hf auth login`) are
read at call time.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import fit
from .errors import ModelLoadError

Progress = Callable[[float, str], None]

DEFAULT_ENDPOINT = "https://huggingface.co"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# org/name (org optional), each part as the hub allows: letters, digits, '-', '_', '.'
REPO_RE = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
# Files loading needs, at the top of the repository (sub-folders hold other formats: onnx/, original/, ...)
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "added_tokens.json", "vocab.txt", "spiece.model", "chat_template.jinja",
                   "*.tiktoken")
SAFETENSORS = ("*.safetensors", "model.safetensors.index.json")
PICKLED = ("pytorch_model*.bin", "pytorch_model.bin.index.json")


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def env_offline() -> bool:
    return truthy(os.environ.get("HF_HUB_OFFLINE")) or truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def token() -> str | None:
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception:  # an unreadable token file must not make public models unloadable
        return None


def hub_cache() -> Path:
    """The HF hub cache, read at call time (huggingface_hub freezes its constants at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


# ---------------------------------------------------------------- ids

@dataclass(frozen=True)
class HubRef:
    """A model on the hub: its repository, the revision asked for (None = the default branch) and the
    TransformerLens official name of the repository when TL knows it (its own conversion is then used)."""

    repo_id: str
    revision: str | None = None
    official: str | None = None

    @property
    def model_id(self) -> str:
        """The pool's id for this model: the repository, with `@revision` when one was asked for."""
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id

    @property
    def rev(self) -> str:
        return self.revision or "main"


@functools.lru_cache(maxsize=1024)
def official_name(name: str) -> str | None:
    """TL's official name for `name` (aliases allowed), or None if TL does not know it."""
    from transformer_lens import loading_from_pretrained as loading

    try:
        return loading.get_official_model_name(name)
    except ValueError:
        return None


def parse(model_id: str) -> HubRef | None:
    """The hub reference behind a model id, or None when it cannot be one (a path, a `prefix:` id, bad characters)."""
    text = model_id.strip()
    if not text or ":" in text or text.startswith(("/", ".", "~")):
        return None
    name, at, revision = text.rpartition("@") if "@" in text else (text, "", "")
    if at and (not name or not revision or not re.fullmatch(r"[\w./-]+", revision) or ".." in revision):
        return None
    if revision == "main":
        revision = ""
    official = official_name(name)
    if official is not None:
        return HubRef(official, revision or None, official)
    if not REPO_RE.match(name) or ".." in name:
        return None
    return HubRef(name, revision or None, None)


BUNDLED_HUB_NAMES = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}


def hub_name(model_id: str) -> str | None:
    """The hub repository a model id stands for (the bundled GGUFs are quantised copies of hub models)."""
    if model_id in BUNDLED_HUB_NAMES:
        return BUNDLED_HUB_NAMES[model_id]
    ref = parse(model_id)
    return ref.repo_id if ref is not None else None


# ---------------------------------------------------------------- the local cache

def repo_folder(repo_id: str) -> Path:
    return hub_cache() / ("models--" + repo_id.replace("/", "--"))


def cached_commit(ref: HubRef) -> str | None:
    """The commit `ref`'s revision points to in the local cache (no network), if its snapshot holds a config."""
    folder = repo_folder(ref.repo_id)
    rev = ref.rev
    if COMMIT_RE.match(rev):
        commit = rev
    else:
        try:
            commit = (folder / "refs" / rev).read_text().strip()
        except (OSError, ValueError):
            return None
    snap = folder / "snapshots" / commit
    return commit if (snap / "config.json").is_file() and has_weights(snap) else None


def cached_commit_any(ref: HubRef) -> str | None:
    """The commit `ref`'s revision points to in the local cache, whatever the repository holds (no network)."""
    rev = ref.rev
    if COMMIT_RE.match(rev):
        return rev if snapshot_dir(ref.repo_id, rev).is_dir() else None
    try:
        return (repo_folder(ref.repo_id) / "refs" / rev).read_text().strip()
    except (OSError, ValueError):
        return None


def has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def snapshot_dir(repo_id: str, commit: str) -> Path:
    return repo_folder(repo_id) / "snapshots" / commit


def cached_models() -> list[dict[str, Any]]:
    """Every model in the local HF cache with a usable snapshot: repo, revisions (ref -> commit), size on disk."""
    root = hub_cache()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.glob("models--*")):
        repo = folder.name[len("models--"):].replace("--", "/")
        refs = {}
        for r in (folder / "refs").rglob("*") if (folder / "refs").is_dir() else []:
            if r.is_file():
                try:
                    refs[str(r.relative_to(folder / "refs"))] = r.read_text().strip()
                except OSError:
                    continue
        snaps = [s for s in (folder / "snapshots").glob("*") if (s / "config.json").is_file() and has_weights(s)] \
            if (folder / "snapshots").is_dir() else []
        if not snaps:
            continue
        try:
            size = sum(b.stat().st_size for b in (folder / "blobs").iterdir() if b.is_file()
                       and not b.name.endswith(".incomplete"))
        except OSError:
            size = 0
        out.append({"repo_id": repo, "revisions": refs or {s.name[:12]: s.name for s in snaps},
                    "size_mb": round(size / 2**20, 1)})
    return out


# ---------------------------------------------------------------- what to download

def wanted(filename: str, allow_pickle: bool) -> bool:
    """Whether loading needs this repository file (top level only)."""
    if "/" in filename:
        return False
    patterns = CONFIG_FILES + TOKENIZER_FILES + SAFETENSORS + (PICKLED if allow_pickle else ())
    return any(fnmatch.fnmatch(filename, p) for p in patterns)


@dataclass
class Plan:
    """What loading `ref` needs: the commit, the files (name -> size in bytes), and how many bytes are missing."""

    ref: HubRef
    commit: str
    files: dict[str, int]
    missing: dict[str, int] = field(default_factory=dict)
    n_params: int | None = None
    weight_bytes: int = 0

    @property
    def download_bytes(self) -> int:
        return sum(self.missing.values())


def describe_error(ref: HubRef, e: Exception, suggest: Callable[[str], list[str]] | None) -> ModelLoadError:
    """A hub failure said so that an agent knows what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{endpoint()}/{ref.repo_id}"
    if isinstance(e, GatedRepoError):
        have = "the token in use has no access to it" if token() else "no Hugging Face token is set"
        return ModelLoadError(
            f"{ref.repo_id} is gated on the hub and {have}. Fix: accept the model's licence on its page ({where}), "
            f"then set HF_TOKEN to a token of that account (or run `hf auth login`) and restart the server.")
    if isinstance(e, RevisionNotFoundError):
        return ModelLoadError(f"{ref.repo_id}: revision {ref.rev!r} not found on the hub. Fix: use a branch, tag or "
                              f"commit of the repository (see {where}/tree/main), or leave out @revision.")
    if isinstance(e, RepositoryNotFoundError):
        close = suggest(ref.model_id) if suggest else []
        return ModelLoadError(
            f"{ref.model_id!r} not found on the hub ({endpoint()}): no such repository, or a private one your token "
            f"cannot see." + (f" Did you mean: {', '.join(close)}?" if close else "")
            + " Model ids: org/name as on the hub (e.g. EleutherAI/pythia-70m), a TransformerLens name (gpt2), "
              "or a local id from list_models.")
    if isinstance(e, OfflineModeIsEnabled):
        return offline_error(ref)
    if isinstance(e, HfHubHTTPError):
        return ModelLoadError(f"{ref.model_id}: the hub at {endpoint()} answered an error ({str(e)[:300]}).")
    err = ModelLoadError(
        f"{ref.model_id}: could not reach the hub at {endpoint()} ({type(e).__name__}: {str(e)[:200]}). Fix: check the "
        f"network (or HF_ENDPOINT); with no network, set HF_HUB_OFFLINE=1 and use a cached model (list_models).")
    err.unreachable = True  # the pool then falls back to a cached revision
    return err


def offline_error(ref: HubRef, close: list[str] = (), local: list[str] = ()) -> ModelLoadError:
    return ModelLoadError(
        f"{ref.model_id} is not in the local Hugging Face cache ({hub_cache()}) and the server is offline "
        f"(HF_HUB_OFFLINE=1 or serve --offline), so it cannot be downloaded."
        + (f" Did you mean: {', '.join(close)}?" if close else "")
        + (f" Models here: {', '.join(local)}." if local else "")
        + " Fix: run once with network access to download it, copy it into that cache, or use a local model "
          "(one of those, hf:<dir> or gguf:<file>).")


def _repo_files(ref: HubRef, suggest: Callable[[str], list[str]] | None) -> tuple[Any, dict[str, int]]:
    """The hub's model info at `ref` (one metadata request) and its files' sizes."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint(), token=token()).model_info(ref.repo_id, revision=ref.revision,
                                                                     files_metadata=True)
    except Exception as e:
        raise describe_error(ref, e, suggest) from None
    if not info.sha:
        raise ModelLoadError(f"{ref.model_id}: the hub did not say which commit {ref.rev!r} is")
    return info, {s.rfilename: int(s.size or 0) for s in (info.siblings or [])}


def _missing(repo_id: str, commit: str, files: dict[str, int]) -> dict[str, int]:
    from huggingface_hub import try_to_load_from_cache

    return {f: n for f, n in files.items()
            if not isinstance(try_to_load_from_cache(repo_id, f, cache_dir=str(hub_cache()), revision=commit), str)}


def plan_files(ref: HubRef, prefix: str) -> Plan:
    """What fetching every file under `prefix/` (or the file `prefix`) of a repository takes, e.g. one SAE of a
    release."""
    info, sizes = _repo_files(ref, None)
    files = {f: n for f, n in sizes.items() if f == prefix or f.startswith(prefix.rstrip("/") + "/")}
    return Plan(ref, info.sha, files, _missing(ref.repo_id, info.sha, files))


def plan_folders(ref: HubRef, folder: str, names: tuple[str, ...] = ()) -> Plan:
    """What fetching the files of every top-level folder whose name fully matches the regular expression `folder`
    takes (only the files named in `names`, when given), e.g. each `layers.L.mlp` of a transcoder set."""
    info, sizes = _repo_files(ref, None)
    files = {f: n for f, n in sizes.items() if "/" in f and re.fullmatch(folder, f.split("/", 1)[0])
             and (not names or f.split("/", 1)[1] in names)}
    return Plan(ref, info.sha, files, _missing(ref.repo_id, info.sha, files))


def plan(ref: HubRef, allow_pickle: bool = False, suggest: Callable[[str], list[str]] | None = None) -> Plan:
    """Ask the hub what loading model `ref` takes (one metadata request; nothing is downloaded)."""
    info, sizes = _repo_files(ref, suggest)
    files = {f: n for f, n in sizes.items() if wanted(f, allow_pickle)}
    if "config.json" not in files:
        raise ModelLoadError(f"{ref.model_id}: the repository has no config.json at its top level; it is not a "
                             f"transformers model.")
    weights = {f: n for f, n in files.items() if f.endswith(".safetensors") or f.endswith(".bin")}
    if not weights:
        pickled = [f for f in sizes if fnmatch.fnmatch(f, "pytorch_model*.bin")]
        raise ModelLoadError(
            f"{ref.model_id}: no safetensors weights in the repository" + (
                " (only pickled pytorch_model*.bin, which can run code when loaded). Fix: if you trust the "
                "repository, set MCP_INTERP_ALLOW_PICKLE=1 for the server and load again." if pickled else "."))
    if any(f.endswith(".safetensors") for f in weights):  # never both formats
        files = {f: n for f, n in files.items() if not f.endswith(".bin") and "pytorch_model" not in f}
        weights = {f: n for f, n in weights.items() if f.endswith(".safetensors")}
    st = getattr(info, "safetensors", None)
    n_params = int(st.total) if st is not None and getattr(st, "total", None) else None
    return Plan(ref, info.sha, files, _missing(ref.repo_id, info.sha, files), n_params, sum(weights.values()))


def check_disk(p: Plan) -> None:
    """Refuse a download that would not fit on the cache's disk (fit.check_disk), before any byte moves."""
    fit.check_disk(p.ref.model_id, p.download_bytes, hub_cache())


# ---------------------------------------------------------------- download

class Relay:
    """A progress callback (or none) that remembers what it raised, so callers re-raise that unchanged: a
    cancelled job's exception must stay a cancellation, not become a load failure."""

    def __init__(self, progress: Progress | None):
        self.progress, self.raised = progress, None

    def __call__(self, fraction: float, message: str) -> None:
        if self.progress is None:
            return
        try:
            self.progress(fraction, message)
        except BaseException as e:
            self.raised = e
            raise


class _Bytes:
    """Bytes, rate and ETA over a whole download, reported through `progress` (which may raise to stop it)."""

    def __init__(self, ref: HubRef, total: int, progress: Progress | None):
        self.ref, self.total, self.progress = ref, max(total, 1), progress
        self.done, self.t0, self.last = 0, time.monotonic(), 0.0
        self.file = ""

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.progress is None or (now - self.last < 0.5 and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-6)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.progress(min(self.done / self.total, 1.0),
                      f"downloading {self.ref.model_id}: {self.file} — {self.done / 2**20:.1f} / "
                      f"{self.total / 2**20:.1f} MiB at {rate / 2**20:.1f} MiB/s, ETA "
                      f"{eta:.0f} s" if eta != float("inf") else f"downloading {self.ref.model_id}: {self.file}")


def _tqdm_for(counter: _Bytes):
    """A silent tqdm that feeds `counter`; huggingface_hub calls `update(n)` for every chunk it writes."""
    from tqdm.auto import tqdm

    class Bar(tqdm):  # type: ignore[misc]
        def __init__(self, *a: Any, **kw: Any):
            kw["disable"] = True
            super().__init__(*a, **kw)

        def update(self, n: float | None = 1) -> bool | None:
            counter.add(int(n or 0))
            return None

    return Bar


def download(p: Plan, progress: Progress | None = None) -> Path:
    """Fetch the plan's missing files (resuming partial ones) and return the snapshot folder of its commit.

    Files go one after another, so a cancel (the progress callback raising) stops within one chunk and leaves
    at most one partial file, which the next download resumes."""
    from huggingface_hub import hf_hub_download

    relay = progress if isinstance(progress, Relay) else Relay(progress)
    counter = _Bytes(p.ref, p.download_bytes, relay)
    # small files first: a wrong token or a broken repo fails before the large weights move
    for name in sorted(p.missing, key=lambda f: (p.missing[f], f)):
        counter.file = name
        try:
            hf_hub_download(p.ref.repo_id, name, revision=p.commit, cache_dir=str(hub_cache()), endpoint=endpoint(),
                            token=token(), tqdm_class=_tqdm_for(counter))
        except Exception as e:
            if e is relay.raised:
                raise
            raise describe_error(p.ref, e, None) from None
    ref_file = repo_folder(p.ref.repo_id) / "refs" / p.ref.rev
    if not COMMIT_RE.match(p.ref.rev):  # hf_hub_download wrote it already when it resolved the ref; keep it current
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(p.commit)
    relay(1.0, f"downloaded {p.ref.model_id} ({p.download_bytes / 2**20:.1f} MiB)")
    return snapshot_dir(p.ref.repo_id, p.commit)


def parameter_count(p: Plan) -> int:
    """The model's parameters: the hub's count where it gives one, else the weight files' bytes over the bytes
    per parameter of the dtype config.json names (config.json is fetched first: a few KB)."""
    if p.n_params:
        return p.n_params
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(p.ref.repo_id, "config.json", revision=p.commit, cache_dir=str(hub_cache()),
                               endpoint=endpoint(), token=token())
        config = json.loads(Path(path).read_text())
    except Exception as e:
        raise describe_error(p.ref, e, None) from None
    p.missing.pop("config.json", None)
    return p.weight_bytes // fit.weight_dtype_bytes(config)


def read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def suggestions(name: str, names: list[str], n: int = 3) -> list[str]:
    """Close matches of a mistyped id among `names` (case-insensitive)."""
    lower = {x.lower(): x for x in names}
    return [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6)]
