"""Feature sources: what a "feature" is at a site — an SAE latent, an MLP neuron, or a direction of a DAS
rotation — each with `encode` (site activation -> feature values) and `delta` (the change of the site activation
that moves the features from f to f'). Interventions keep the error term: the site becomes x + delta(f, f'), so an
untouched feature leaves the model exactly as it was."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..core import Site


class SAEFeatures:
    """Latents of a sae-lens SAE at `site`: delta = decode(f') - decode(f) (the SAE's error term is kept)."""

    kind = "sae"

    def __init__(self, sae, site: Site):
        self.sae, self.site = sae, site
        self.n = int(sae.cfg.d_sae)

    def names(self) -> list[str]:
        return [f"latent {i}" for i in range(self.n)]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(x.to(self.sae.device, self.sae.dtype)).to(x.device, torch.float32)

    @torch.no_grad()
    def delta(self, f: torch.Tensor, f_new: torch.Tensor) -> torch.Tensor:
        dt = self.sae.dtype
        return self.sae.decode(f_new.to(self.sae.device, dt)) - self.sae.decode(f.to(self.sae.device, dt))

    def direction(self, i: int) -> torch.Tensor:
        return self.sae.W_dec[i].detach().float().cpu()


class NeuronFeatures:
    """The hidden units of an MLP (`mlp_post` at a layer): the feature is the neuron's activation."""

    kind = "neurons"

    def __init__(self, site: Site, d_mlp: int):
        if site.kind != "mlp_post":
            raise ValueError("neuron features live at mlp_post")
        self.site, self.n = site, d_mlp

    def names(self) -> list[str]:
        return [Site("mlp_post", self.site.layer, neuron=i).name for i in range(self.n)]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()

    def delta(self, f: torch.Tensor, f_new: torch.Tensor) -> torch.Tensor:
        return f_new - f

    def direction(self, i: int) -> torch.Tensor:
        e = torch.zeros(self.n)
        e[i] = 1.0
        return e


class DirectionFeatures:
    """The coordinates of the site activation along the orthonormal columns of `R` [d, k] (a DAS rotation)."""

    kind = "das"

    def __init__(self, R: torch.Tensor, site: Site, label: str = "das"):
        self.R, self.site, self.label = R.float(), site, label
        self.n = R.shape[1]

    def names(self) -> list[str]:
        return [f"{self.label} dir {i}" for i in range(self.n)]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.R.to(x.device)

    def delta(self, f: torch.Tensor, f_new: torch.Tensor) -> torch.Tensor:
        return (f_new - f) @ self.R.T.to(f.device)

    def direction(self, i: int) -> torch.Tensor:
        return self.R[:, i].clone()


Edit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (f [b, F], example index [b]) -> f' [b, F]


def source_hooks(source, positions: torch.Tensor, edit: Edit, example_idx: torch.Tensor) -> list:
    """The forward hooks of an edit of `source`'s features: one hook at its site, or the source's own (a transcoder
    reads at the MLP's input and writes at its output)."""
    if hasattr(source, "hooks"):
        return source.hooks(positions, edit, example_idx)
    return [(source.site.hook, intervention_hook(source, positions, edit, example_idx))]


def intervention_hook(source, positions: torch.Tensor, edit: Edit, example_idx: torch.Tensor):
    """A TransformerLens hook at `source.site.hook`: at each row's position, features f -> edit(f, example_idx) and
    the activation x -> x + delta(f, f'). `positions` [b] per row."""

    def hook(act, hook):
        rows = torch.arange(act.shape[0], device=act.device)
        p = positions.to(act.device)
        x = act[rows, p]
        f = source.encode(x)
        f_new = edit(f, example_idx)
        act = act.clone()
        act[rows, p] = x + source.delta(f, f_new).to(act.device, act.dtype)
        return act

    return hook


@torch.no_grad()
def feature_values(model, source, token_lists: Sequence[Sequence[int]], positions: Sequence[int],
                   batch_size: int = 32) -> torch.Tensor:
    """[n, F]: every feature's value at one position per prompt (the model runs only up to the site)."""
    from .activations import site_activations

    out = torch.zeros(len(token_lists), source.n)
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(token_lists):
        groups.setdefault(len(t), []).append(i)
    for _, idx in sorted(groups.items()):
        for j in range(0, len(idx), batch_size):
            ch = idx[j:j + batch_size]
            x = site_activations(model, source.site, torch.tensor([list(token_lists[i]) for i in ch]),
                                 torch.tensor([positions[i] for i in ch]))
            out[ch] = source.encode(x).float().cpu()
    return out


__all__ = ["DirectionFeatures", "Edit", "NeuronFeatures", "SAEFeatures", "feature_values", "intervention_hook",
           "source_hooks"]
