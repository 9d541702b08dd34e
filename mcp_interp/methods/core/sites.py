"""The one component vocabulary: a `Site` is a kind of activation at a layer (and head / neuron /
position where that applies). Every method family and every tool speaks it; hook names and unit
names ("L3H2", "MLP3", "L3N7", "L3H2.q", "P:IO") are rendered from it, never parsed back.

Kinds and their TransformerLens hooks (`l` = layer):

| kind | hook | what |
|---|---|---|
| embed | hook_embed | token embedding (plus positional embedding where the model adds one); layer -1 |
| resid_pre | blocks.l.hook_resid_pre | residual stream entering block l |
| resid_post | blocks.l.hook_resid_post | residual stream leaving block l |
| attn_out | blocks.l.hook_attn_out | attention output of block l (all heads) |
| z | blocks.l.attn.hook_z | one head's output before W_O (`head`) |
| q, k, v | blocks.l.hook_{q,k,v}_input | one head's query / key / value input (`head`; a key-value group under GQA) |
| mlp_in | blocks.l.hook_mlp_in | the MLP's input |
| mlp_post | blocks.l.mlp.hook_post | the MLP's hidden activations (all, or one `neuron`) |
| mlp_out | blocks.l.hook_mlp_out | the MLP's output |
| logits | blocks.(l-1).hook_resid_post | the unembedding's input; layer = n_layers |
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

SiteKind = Literal["embed", "resid_pre", "resid_post", "attn_out", "z", "q", "k", "v", "mlp_in", "mlp_post",
                   "mlp_out", "logits"]
HEAD_KINDS = ("z", "q", "k", "v")
MLP_KINDS = ("mlp_in", "mlp_post", "mlp_out")
RESID_KINDS = ("resid_pre", "resid_post")
_HOOKS = {"resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post", "attn_out": "hook_attn_out",
          "z": "attn.hook_z", "q": "hook_q_input", "k": "hook_k_input", "v": "hook_v_input",
          "mlp_in": "hook_mlp_in", "mlp_post": "mlp.hook_post", "mlp_out": "hook_mlp_out"}


@dataclass(frozen=True)
class Site:
    """A component at a place.

    kind: one of `SiteKind`; layer: the block (-1 for embed, n_layers for logits); head: for z/q/k/v;
    neuron: one hidden unit of mlp_post; position: a token index, a position column, or a named
    position (None = every position); grouped: for k/v, `head` indexes a key-value group (GQA).
    """

    kind: str
    layer: int = 0
    head: int | None = None
    neuron: int | None = None
    position: int | str | None = None
    grouped: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _HOOKS and self.kind not in ("embed", "logits"):
            raise ValueError(f"unknown site kind {self.kind!r}; one of {sorted([*_HOOKS, 'embed', 'logits'])}")
        if (self.head is not None) != (self.kind in HEAD_KINDS):
            raise ValueError(f"site {self.kind}: a head index is required for {'/'.join(HEAD_KINDS)} and only there")
        if self.neuron is not None and self.kind != "mlp_post":
            raise ValueError(f"site {self.kind}: a neuron index belongs to mlp_post only")

    # ------------------------------------------------------------------ rendering
    @property
    def hook(self) -> str:
        """The TransformerLens hook name holding this site's activation."""
        if self.kind == "embed":
            return "hook_embed"
        if self.kind == "logits":
            return f"blocks.{self.layer - 1}.hook_resid_post"
        return f"blocks.{self.layer}.{_HOOKS[self.kind]}"

    @property
    def name(self) -> str:
        """The unit name: L3H2 (head output), L3H2.q / L3G1.k (head inputs), MLP3, L3N7 (neuron), P:IO (a named
        position of the residual stream), resid_pre3 / attn_out3 (whole sites), embed, logits."""
        k, l = self.kind, self.layer
        if k in ("embed", "logits"):
            return k
        if k == "z":
            return f"L{l}H{self.head}"
        if k in ("q", "k", "v"):
            return f"{self.unit}.{k}"
        if k == "mlp_post" and self.neuron is not None:
            return f"L{l}N{self.neuron}"
        if k in MLP_KINDS:
            return f"MLP{l}"
        if k in RESID_KINDS and isinstance(self.position, str):
            return f"P:{self.position}"
        return f"{k}{l}"

    @property
    def unit(self) -> str:
        """The component this site belongs to: the head or key-value group of a q/k/v input ("L3H2",
        "L3G1"), else `name`."""
        if self.kind in ("q", "k", "v"):
            return f"L{self.layer}{'G' if self.grouped else 'H'}{self.head}"
        return self.name

    @property
    def label(self) -> str:
        """`name`, and `@position` when the site is at one position (positions named in `name` stay there)."""
        if self.position is None or self.name.startswith("P:"):
            return self.name
        return f"{self.name}@{self.position}"

    def __str__(self) -> str:
        return self.hook if self.head is None else f"{self.hook}[{self.head}]"

    # ------------------------------------------------------------------ geometry
    @property
    def plot_layer(self) -> float:
        """Height in a layered circuit drawing: an MLP sits above its layer's heads."""
        return self.layer + 0.5 if self.kind in MLP_KINDS else float(self.layer)

    @property
    def on_residual(self) -> bool:
        """The activation is a residual-stream vector (or is added straight into it after its block)."""
        return self.kind in ("resid_pre", "resid_post", "mlp_out")

    @property
    def start_layer(self) -> int:
        """First block that must run after patching here: the site's own block, or the next one for sites
        added into the residual stream after their block (resid_post, mlp_out)."""
        return self.layer + 1 if self.kind in ("resid_post", "mlp_out") else self.layer

    def dim(self, model) -> int:
        """Width of the activation at this site (per head for head kinds, one for a neuron)."""
        cfg = model.cfg
        if self.kind in HEAD_KINDS:
            return cfg.d_head
        if self.kind == "mlp_post":
            return 1 if self.neuron is not None else cfg.d_mlp
        return cfg.d_model

    def at(self, position: int | str | None) -> Site:
        """The same component at another position."""
        return replace(self, position=position)

    def check(self, model) -> None:
        """ValueError naming the problem when the site does not exist in `model`."""
        cfg = model.cfg
        if self.kind == "embed":
            return
        top = cfg.n_layers if self.kind == "logits" else cfg.n_layers - 1
        if not 0 <= self.layer <= top:
            raise ValueError(f"{self.hook}: layer {self.layer} out of range 0..{top}")
        if self.kind in HEAD_KINDS:
            n = n_kv_heads(cfg) if self.grouped else cfg.n_heads
            if not 0 <= self.head < n:
                raise ValueError(f"{self.hook}: head {self.head} out of range 0..{n - 1}")
        if self.kind in MLP_KINDS and cfg.attn_only:
            raise ValueError(f"{self.hook}: the model is attention-only")
        if self.neuron is not None and not 0 <= self.neuron < cfg.d_mlp:
            raise ValueError(f"{self.hook}: neuron {self.neuron} out of range 0..{cfg.d_mlp - 1}")


def n_kv_heads(cfg) -> int:
    """Key-value heads of a grouped-query attention config (= n_heads without GQA)."""
    return (cfg.n_key_value_heads if getattr(cfg, "n_key_value_heads", None) and not cfg.ungroup_grouped_query_attention
            else cfg.n_heads)


__all__ = ["HEAD_KINDS", "MLP_KINDS", "RESID_KINDS", "Site", "SiteKind", "n_kv_heads"]
