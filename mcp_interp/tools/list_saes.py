"""Tool list_saes: the pretrained SAEs a model has (the sae-lens registry, readable offline) and the store's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from .. import lazy
from ..methods.features import pretrained
from .base import ToolSpec
from .errors import ToolError

if TYPE_CHECKING:
    from ..runtime.context import AppContext

normalize_model_id = lazy("mcp_interp.models", "normalize_model_id")  # the pool imports torch: on first call


class ListSaesInput(BaseModel):
    model: str | None = Field(None, description="Only SAEs for this model (a hub id, a TransformerLens name such as "
                              "gpt2 or gemma-2-2b, or gemma3-270m). Without it and without release: the releases "
                              "of every model.")
    release: str | None = Field(None, description="Only this release (every SAE id in it).")
    limit: int = Field(200, ge=1, le=5000, description="At most this many SAEs in `saes`.")


class PretrainedSaeEntry(BaseModel):
    release: str
    sae_id: str
    repo_id: str = Field(description="The hub repository holding the release.")
    path: str = Field(description="Where the SAE lies inside the repository.")
    model: str = Field(description="The model the release was trained on, as the registry names it.")
    width: int | None = Field(None, description="Number of latents where the id or path says it (e.g. width_16k).")
    expected_l0: float | None = None
    expected_variance_explained: float | None = None
    neuronpedia_id: str | None = None
    cached: bool = Field(description="Its files are in the local Hugging Face cache (loadable offline).")


class ReleaseSummary(BaseModel):
    release: str
    model: str
    repo_id: str
    n_saes: int
    loader: str = Field(description="The sae-lens loader of the release's format.")


class StoredSae(BaseModel):
    run_id: str
    tool: str = Field(description="train_sae or load_sae")
    model: str
    hook: str | None = None
    d_sae: int | None = None


class ListSaesOutput(BaseModel):
    saes: list[PretrainedSaeEntry] = Field(description="Registry SAEs matching the filters (when a model or release "
                                           "is given), first `limit`.")
    n_matching: int
    releases: list[ReleaseSummary] = Field(description="The registry's releases matching the filters.")
    stored: list[StoredSae] = Field(description="SAEs in this store (train_sae / load_sae runs) for the model.")
    summary: str


def list_saes(app: AppContext, args: ListSaesInput) -> ListSaesOutput:
    if args.release is not None and args.release not in pretrained.registry():
        try:
            pretrained.find(args.release, None)
        except Exception as e:
            raise ToolError(f"release: {e}") from None
    found = pretrained.pretrained_saes(args.model, args.release)
    releases: dict[str, ReleaseSummary] = {}
    for e in found:
        r = releases.setdefault(e.release, ReleaseSummary(release=e.release, model=e.model, repo_id=e.repo_id,
                                                          n_saes=0, loader=e.loader))
        r.n_saes += 1
    show = found[:args.limit] if (args.model or args.release) else []
    saes = [PretrainedSaeEntry(release=e.release, sae_id=e.sae_id, repo_id=e.repo_id, path=e.path, model=e.model,
                               width=e.width, expected_l0=e.expected_l0,
                               expected_variance_explained=e.expected_variance_explained,
                               neuronpedia_id=e.neuronpedia_id, cached=e.cached()) for e in show]
    model = normalize_model_id(args.model) if args.model else None
    stored = []
    for tool in ("train_sae", "load_sae"):
        for rec in app.store.list_runs(tool=tool, model=model, status="complete", limit=200):
            km = rec.key_metrics or {}
            stored.append(StoredSae(run_id=rec.run_id, tool=rec.tool, model=rec.model, hook=km.get("hook"),
                                    d_sae=km.get("d_sae")))
    what = f" for {args.model}" if args.model else ""
    summary = (f"{len(found)} pretrained SAEs in {len(releases)} releases{what}"
               + (f" ({sum(s.cached for s in saes)} of those shown cached)" if saes else "")
               + f"; {len(stored)} in this store.")
    if found and (args.model or args.release):
        e = found[0]
        summary += (f" Next: load_sae(model='{args.model or e.model}', release='{e.release}', sae_id='{e.sae_id}') "
                    f"downloads one and checks it against the model.")
    elif not found and args.model:
        summary += " The registry has none for this model: train_sae trains one here."
    return ListSaesOutput(saes=saes, n_matching=len(found), releases=list(releases.values()), stored=stored,
                          summary=summary)


LIST_SAES = ToolSpec(
    "list_saes", fn=list_saes, input_model=ListSaesInput, output_model=ListSaesOutput, read_only=True,
    description=(
        "Pretrained SAEs by name: the sae-lens registry (Gemma Scope, GPT-2 small, Pythia, Llama, Qwen releases; "
        "read offline from the installed sae-lens) filtered by model or release — release, sae_id, hub repository, "
        "width, expected L0, whether cached — and the SAEs this store holds (train_sae / load_sae runs). Then "
        "load_sae(release=..., sae_id=...) downloads one."))
