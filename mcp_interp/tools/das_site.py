"""What train_das and eval_das share: the site a rotation lives at (checked against the model), its record in
a result, and the interchange data (with dataset refusals named after the tools' fields)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from ..methods import das as das_methods
from ..methods.core import Site
from ..tasks.causal import TaskSpecError
from ..tasks.interchange import build_interchange_dataset
from .errors import ToolError

PROBE = 32  # interchange pairs built to measure the prompt length before the memory check
SiteKind = Literal["resid_pre", "resid_post", "attn_out", "mlp_out", "z"]


class DasSite(BaseModel):
    kind: str
    hook: str
    layer: int
    head: int | None = None
    position: str
    source_position: str



def das_site_of(args_site: str, layer: int, head: int | None, model) -> Site:
    cfg = model.cfg
    if not 0 <= layer < cfg.n_layers:
        raise ToolError(f"layer: {layer} out of range 0..{cfg.n_layers - 1}.")
    if args_site == "z" and head is None:
        raise ToolError("head: site 'z' is one head's output; pass `head`.")
    if args_site != "z" and head is not None:
        raise ToolError(f"head: only for site 'z'; drop it or use site='z' (got site {args_site!r}).")
    if head is not None and not 0 <= head < cfg.n_heads:
        raise ToolError(f"head: {head} out of range 0..{cfg.n_heads - 1}.")
    if args_site == "mlp_out" and cfg.attn_only:
        raise ToolError("site: the model is attention-only; it has no MLP output. Use resid_pre, attn_out or z.")
    site = Site(args_site, layer, head=head)
    try:
        das_methods.check_site(model, site)
    except ValueError as e:
        raise ToolError(f"site: {e}") from None
    return site


def interchange_data(spec, tokenizer, variable: str, **kw):
    """The interchange dataset, with a dataset refusal named after the tool's field."""
    try:
        return build_interchange_dataset(spec, tokenizer, variable, **kw)
    except TaskSpecError as e:
        field = {"n": "n_train", "variable": "variable", "position": "position", "source_position": "source_position",
                 "counterfactual": "counterfactual"}.get(e.field, f"task.{e.field}")
        raise ToolError(f"{field}: {e.message}") from None


def das_site_record(site: Site, position: str, source_position: str) -> DasSite:
    return DasSite(kind=site.kind, hook=site.hook, layer=site.layer, head=site.head, position=position,
                   source_position=source_position)



def prompt_length(spec, tokenizer, variable: str, n: int, **kw) -> int | None:
    """The prompt length of the task's interchange pairs, from a few of them (the memory check runs before the
    whole dataset is built); None where even those cannot be built (building the dataset then says why)."""
    try:
        probe = build_interchange_dataset(spec, tokenizer, variable, n=min(n, PROBE), **kw)
    except TaskSpecError:
        return None
    return max(len(e.base_tokens) for e in probe.train + probe.test)
