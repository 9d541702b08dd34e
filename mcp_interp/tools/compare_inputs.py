"""compare_features' two sides and its aligned inputs: which layers and feature sources a side names, the rows
(task prompts at a named position, resolved per model; or corpus tokens, aligned by token or by character ends)
both sides are read at, and the feature values there."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from .. import lazy
from ..methods import compare, features
from ..methods.core import Site
from .base import ToolRun
from .common import DEFAULT_MODEL, dataset, parse_layers, validate_or_raise
from .errors import ToolError
from .find_features import feature_source

torch = lazy("torch")  # imported on the first call, not when the server starts

# ------------------------------------------------------------------ sides

class Side(BaseModel):
    model: str = Field(DEFAULT_MODEL, description="Model id (list_models).")
    source: Literal["resid", "neurons", "sae", "das", "probe"] = Field(
        "resid", description="resid: the raw activation at `site` (one feature per dimension); neurons: MLP hidden "
        "units at `layer`; sae: latents of `sae`; das: the directions of a train_das run; probe: the directions of a "
        "probe run.")
    layer: int | list[int] | str | None = Field(
        None, description="resid / neurons: a layer, a list of layers, or a range 'a:b' / 'a:b:step' (end excluded); "
        "with several layers the tool draws a layer x layer CKA map and matches features at the pair that shares "
        "most beyond the token identity (or, with `variable`, separates it best on both sides; `layer_choice` says "
        "why). sae / das: taken from the SAE / run; probe: one of the probe run's layers (an int; default its best).")
    site: Literal["resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_post"] = Field(
        "resid_post", description="source='resid': which activation (neurons read mlp_post).")
    sae: str | None = Field(None, description="source='sae': a train_sae / load_sae run id, "
                               "`<train_transcoders run id>/layers.L.mlp` (a transcoder), or a sae-lens directory.")
    das_run: str | None = Field(None, description="source='das': a train_das run id.")
    probe_run: str | None = Field(None, description="source='probe': a probe run id.")


def side_layers(side: Side, n_layers: int, field: str) -> list[int]:
    L = side.layer
    if L is None:
        raise ToolError(f"{field}.layer: source={side.source!r} needs `layer` (an int, a list, or 'a:b').")
    return parse_layers(L, n_layers, f"{field}.layer")


def side_sources(run: ToolRun, side: Side, lm, field: str) -> list:
    """[(layer, feature source)] of one side."""
    model = lm.model
    if side.source == "probe":
        if side.layer is not None and not isinstance(side.layer, int):
            raise ToolError(f"{field}.layer: source='probe' takes one of the probe run's layers (an int) or none (its "
                            f"best layer).")
        src = feature_source(run.app, lm, "probe", layer=side.layer, field=f"{field}.", probe_run=side.probe_run)
        return [(src.site.layer, src)]
    if side.source in ("sae", "das"):
        if side.layer is not None:
            raise ToolError(f"{field}.layer: source={side.source!r} takes its layer from the SAE / run; leave `layer` "
                            f"out (layer ranges need source 'resid' or 'neurons').")
        src = feature_source(run.app, lm, side.source, side.sae, None, side.das_run, field=f"{field}.")
        return [(src.site.layer, src)]
    layers = side_layers(side, model.cfg.n_layers, field)
    if side.source == "neurons":
        return [(l, feature_source(run.app, lm, "neurons", layer=l, field=f"{field}.")) for l in layers]
    if side.site == "mlp_post" and model.cfg.attn_only:
        raise ToolError(f"{field}.site: {side.model} has no MLPs; pick resid_pre / resid_post / attn_out.")
    out = []
    for l in layers:
        site = Site(side.site, l)
        d = site.dim(model)
        out.append((l, features.DirectionFeatures(torch.eye(d), site, label=f"L{l} {side.site}")))
    return out


def describe_side(side: Side, sources) -> dict:
    s = sources[0][1]
    return {"model": side.model, "source": side.source, "hook": s.site.hook, "layers": [l for l, _ in sources],
            "n_features": s.n, **({"sae": side.sae} if side.sae else {}),
            **({"das_run": side.das_run} if side.das_run else {}),
            **({"probe_run": side.probe_run} if side.probe_run else {})}


# ------------------------------------------------------------------ inputs

class AlignedRows:
    """What both sides see: per side its token sequences and the (sequence, position) of every aligned row, plus
    what a context of a row says."""

    def __init__(self, toks_a, toks_b, seq, pos_a, pos_b, label, groups=None, ds_a=None, ds_b=None, texts=None,
                 char_end=None, alignment=""):
        self.toks_a, self.toks_b, self.seq, self.pos_a, self.pos_b = toks_a, toks_b, seq, pos_a, pos_b
        self.label, self.groups, self.ds_a, self.ds_b = label, groups, ds_a, ds_b
        self.texts, self.char_end, self.alignment = texts, char_end, alignment

    def tokens(self, side: str) -> list[int]:
        """The token each row reads on `side` ("a" / "b")."""
        toks, p = (self.toks_a, self.pos_a) if side == "a" else (self.toks_b, self.pos_b)
        return [toks[s][p[r]] for r, s in enumerate(self.seq)]

    def contexts(self, values: np.ndarray, side: str, tokenizer, k: int = 5) -> list[dict]:
        """The `k` rows where `values` [rows] is highest, as contexts with their value."""
        return [{**self.context(int(r), side, tokenizer), "value": round(float(values[r]), 4)}
                for r in np.argsort(-values)[:k]]

    def context(self, r: int, side: str, tokenizer) -> dict:
        s = self.seq[r]
        toks, p = (self.toks_a, self.pos_a) if side == "a" else (self.toks_b, self.pos_b)
        tok = tokenizer.decode([toks[s][p[r]]])
        if self.texts is not None:
            e = self.char_end[r]
            return {"text": self.texts[s][max(0, e - 60):e], "token": tok}
        if self.ds_a is not None:
            return {"prompt": self.ds_a.examples[s].prompt, "token": tok}
        return {"text": tokenizer.decode(toks[s][max(0, p[r] - 12):p[r] + 1]), "token": tok}  # random tokens


def task_rows(args: Any, spec, lm_a, lm_b, cf_name: str | None) -> AlignedRows:
    for lm, side, f in ((lm_a, args.a, "a"), (lm_b, args.b, "b")):
        validate_or_raise(spec, lm.tokenizer, side.model)
    # the causal tests read a logit difference: pairs whose counterfactual changes the answer
    ds_a = dataset(spec, lm_a.tokenizer, args.n, args.seed, cf_name, answer_changes=True)
    ds_b = dataset(spec, lm_b.tokenizer, args.n, args.seed, cf_name, answer_changes=True)
    if [e.prompt for e in ds_a.examples] != [e.prompt for e in ds_b.examples]:
        raise ToolError(f"task: {spec.name!r} draws different prompts for the two tokenizers, so examples cannot be "
                        f"aligned. Fix: a task whose prompts do not depend on the tokenizer.")
    if args.position not in ds_a.position_names:
        raise ToolError(f"position: {args.position!r} is not a position of {spec.name!r}; "
                        f"it has {ds_a.position_names}.")
    for ds, f in ((ds_a, "a"), (ds_b, "b")):
        bad = ds.unresolved.get(args.position)
        if bad:
            raise ToolError(f"position: {args.position!r} does not resolve on side {f}'s tokenizer for {len(bad)} "
                            f"prompts (e.g. {ds.examples[bad[0]].prompt!r}). Fix: another position or task.")
    n = len(ds_a)
    return AlignedRows([e.tokens for e in ds_a.examples], [e.tokens for e in ds_b.examples], list(range(n)),
                 [e.positions[args.position] for e in ds_a.examples],
                 [e.positions[args.position] for e in ds_b.examples],
                 f"{spec.name} at {args.position}", ds_a=ds_a, ds_b=ds_b,
                 alignment=f"one row per prompt at {args.position!r}, resolved per model")


def corpus_rows(args: Any, lm_a, lm_b) -> AlignedRows:
    ta, tb = lm_a.tokenizer, lm_b.tokenizer
    if args.corpus == "random":
        if type(ta) is not type(tb) or ta.vocab_size != tb.vocab_size:
            raise ToolError("corpus: 'random' tokens need one tokenizer on both sides; use 'shakespeare'.")
        wins = features.random_windows(ta.vocab_size, args.context, args.tokens, seed=args.seed)
        seq = [s for s, w in enumerate(wins) for _ in w]
        pos = [p for w in wins for p in range(len(w))]
        return AlignedRows(wins, wins, seq, pos, pos, f"{len(wins)} random windows", groups=seq,
                     alignment="token by token (random tokens)")
    docs = features.read_texts(features.shakespeare_files())
    rng = np.random.default_rng(args.seed)
    texts = []
    need = -(-args.tokens // max(args.context - 2, 1)) + 4
    for _ in range(need * 4):  # windows of characters; each tokenizer cuts its own tokens
        d = docs[int(rng.integers(len(docs)))]
        if len(d) <= 8 * args.context:
            continue
        st = int(rng.integers(0, len(d) - 8 * args.context))
        texts.append(d[st:st + 4 * args.context])
        if len(texts) >= need:
            break
    al = compare.align_by_chars(texts, ta, tb, skip_first=1, max_tokens=args.context)
    k = min(len(al), args.tokens)
    if k < 16:
        raise ToolError("corpus: fewer than 16 aligned tokens; raise `tokens` or `context`.")
    how = "token by token (same tokenizer)" if al.same_tokenizer else "at shared character ends (tokenizers differ)"
    return AlignedRows(al.tokens_a, al.tokens_b, al.seq[:k], al.pos_a[:k], al.pos_b[:k],
                 f"shakespeare, {k} aligned tokens", groups=al.seq[:k], texts=texts, char_end=al.char_end[:k],
                 alignment=how)


def side_values(run: ToolRun, lm, sources, toks, rows: AlignedRows, pos) -> list[np.ndarray]:
    with lm.use(), features.reading(lm.model, [s.site for _, s in sources]):
        acts = features.activations_at(lm.model, [s.site for _, s in sources], toks, rows.seq, pos,
                                should_cancel=run.should_cancel)
        return [s.encode(x.to(lm.device)).float().cpu().numpy() for (_, s), x in zip(sources, acts)]
