"""Rows of the adjacency: many target nodes pulled back at once through the frozen local replacement model.

A row is one target node t. Its covector (the direction its value reads: an encoder column W_enc[:, f] on the
transcoder's input, or a logit read-out on the final norm's output) is injected where t reads, and carried back
through the frozen model layer by layer, all B rows of a chunk together as one [B, T, d_model] tensor g (the
gradient of t's value w.r.t. the stream at that point). On the way, where a source writes into the stream, its
direct effect on t is read off: A[t, s] = write_s . g_t (a latent: a_s W_dec[s] . g at its position; an error node:
err . g; a token: its embedding . g at its position), and every bias met adds bias . g to t's constant.

One block, top down (g on the stream after the block):
  MLP l      read off its latents' and error nodes' edges and b_dec's constant; the skip term's pull-back
             W_skip^T g through the frozen ln2 joins g (a linear path through the layer, not a node);
  inject     rows whose target reads at layer l join here (they read the stream MLP l reads, so MLP l's own
             writes never reach them, nor, on parallel blocks, attention l's);
  attention  with patterns A frozen only the values carry g: g_k += ln1^T sum_h W_V[h] sum_q A[h, q, k] W_O[h] g_q,
             plus the constants of b_O, b_V and ln1's bias (g first pulled through the frozen ln1_post where the
             model normalises attention's output).
No autograd: each step is a few einsums (the frozen model is linear), so a chunk costs about one forward of B
copies of the prompt without the MLPs. `replacement.replacement_hooks` is the autograd reference it is tested
against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .replacement import FrozenRun


class Backward:
    """Pulls chunks of target rows back through the frozen model of `run` (the model's weights read once).

    Source columns: the run's active latents (run.features order), then error nodes (layer-major over the MLP
    layers, one per position), then tokens (one per position): `n_sources` in all."""

    def __init__(self, model, run: FrozenRun):
        cfg = model.cfg
        self.run, self.L, self.T, self.d = run, cfg.n_layers, run.n_pos, cfg.d_model
        dev = run.embed.device
        f32 = lambda t: t.detach().to(dev, torch.float32)  # noqa: E731
        self.attn = []
        for l in range(cfg.n_layers):
            a = model.blocks[l].attn
            self.attn.append((f32(a.W_V), f32(a.b_V), f32(a.W_O), f32(a.b_O)))  # W_V, b_V per query head (GQA)
        self.n_features = int(run.features.shape[0])
        self.err_index = {l: i for i, l in enumerate(run.mlp_layers)}
        self.n_errors = len(run.mlp_layers) * self.T
        self.n_sources = self.n_features + self.n_errors + self.T
        # each layer's latents grouped by position: (position, columns, decoder rows [n, d], activations [n])
        self.latents: dict[int, list[tuple[int, Tensor, Tensor, Tensor]]] = {}
        for l, tc in run.transcoders.items():
            groups = []
            for p in range(self.T):
                cols = ((run.features[:, 0] == l) & (run.features[:, 1] == p)).nonzero().flatten()
                if len(cols):
                    groups.append((p, cols, tc.W_dec[run.features[cols, 2]], run.activations[cols]))
            self.latents[l] = groups

    def rows(self, layer: Tensor, pos: Tensor, vec: Tensor, const: Tensor) -> tuple[Tensor, Tensor]:
        """Edges [B, n_sources] and constants [B] of B target rows. Row b reads at `layer[b]` (n_layers: the final
        norm's output, a logit; l < n_layers: transcoder l's input, a latent) and position pos[b] along vec[b]
        [d], its own constant const[b] (b_enc or the unembedding bias) included.

        Rows are carried deepest first: a row's gradient is 0 above the layer it reads at, so at each layer only
        the rows already injected (a prefix of the sorted chunk) are computed."""
        run, B = self.run, int(layer.shape[0])
        dev = run.embed.device
        order = torch.argsort(layer.to(dev), descending=True, stable=True)
        layer, pos = layer.to(dev)[order], pos.to(dev)[order]
        vec, const = vec.to(dev, torch.float32)[order], const.to(dev, torch.float32)[order].clone()
        g = torch.zeros(B, self.T, self.d, device=dev)
        edges = torch.zeros(B, self.n_sources, device=dev)
        self._inject(g, const, layer, pos, vec, self.L)
        for l in range(min(int(layer[0]), self.L - 1), -1, -1):
            above, upto = int((layer > l).sum()), int((layer >= l).sum())  # rows injected above l / by l
            ga, ca = g[:above], const[:above]  # views: in-place updates reach g and const
            skip = None
            if above and l in self.err_index:
                self._read_mlp(l, ga, edges[:above], ca)
                skip = self._skip_pull(l, ga, ca)
            if run.parallel:
                if above:
                    attn = self._attn_pull(l, ga, ca)
                    ga += attn if skip is None else attn + skip
                self._inject(g, const, layer, pos, vec, l)
            else:
                if skip is not None:
                    ga += skip
                self._inject(g, const, layer, pos, vec, l)
                if upto:
                    g[:upto] += self._attn_pull(l, g[:upto], const[:upto])
        tok = self.n_features + self.n_errors
        edges[:, tok:] = (g * run.embed).sum(-1)
        if run.pos_embed is not None:
            const += (g * run.pos_embed).sum((1, 2))
        back = torch.empty_like(order)
        back[order] = torch.arange(B, device=dev)
        return edges[back], const[back]

    def _inject(self, g: Tensor, const: Tensor, layer: Tensor, pos: Tensor, vec: Tensor, at: int) -> None:
        """Add the covectors of the rows that read at layer `at` to g, pulled back to the stream, and the constant
        of the norm bias they read through."""
        rows = (layer == at).nonzero().flatten()
        if not len(rows):
            return
        c, p = vec[rows], pos[rows]
        if at == self.L:
            norm, weight = self.run.ln_final, True
        else:
            reads = self.run.transcoders[at].reads
            if reads == "resid":
                g[rows, p] += c
                return
            norm, weight = self.run.ln2[at], reads == "mlp_input"
        g[rows, p] += norm.pull(c, weight, pos=p)
        const[rows] += norm.bias_term(c, weight)

    def _read_mlp(self, l: int, g: Tensor, edges: Tensor, const: Tensor) -> None:
        """Edges from MLP l's latents and error nodes (g: the stream after MLP l's write), and b_dec's constant."""
        for p, cols, dec, act in self.latents.get(l, []):
            edges[:, cols] = (g[:, p] @ dec.T) * act
        e0 = self.n_features + self.err_index[l] * self.T
        edges[:, e0:e0 + self.T] = (g * self.run.errors[l]).sum(-1)
        tc = self.run.transcoders.get(l)
        if tc is not None:
            const += g.sum(1) @ tc.b_dec

    def _skip_pull(self, l: int, g: Tensor, const: Tensor) -> Tensor | None:
        """The skip term's pull-back W_skip^T g through the frozen ln2 (None without a skip term)."""
        tc = self.run.transcoders.get(l)
        if tc is None or tc.W_skip is None:
            return None
        c = g @ tc.W_skip  # [B, T, d_in]
        if tc.reads == "resid":
            return c
        weight = tc.reads == "mlp_input"
        const += self.run.ln2[l].bias_term(c, weight)
        return self.run.ln2[l].pull(c, weight)

    def _attn_pull(self, l: int, g: Tensor, const: Tensor) -> Tensor:
        """Attention l's pull-back of g (the stream after its write) to the stream it reads, patterns frozen; adds
        the constants of b_O, b_V and ln1's bias."""
        W_V, b_V, W_O, b_O = self.attn[l]
        A = self.run.patterns[l]  # [H, q, k]
        post = self.run.ln1_post[l]  # Gemma 2/3: attention's output is normalised (scale frozen) before the add
        if post.kind != "none":
            const += post.bias_term(g)
            g = post.pull(g)
        g_z = torch.einsum("bqd,hed->bhqe", g, W_O)  # the gradient at each head's z
        g_v = torch.einsum("hqk,bhqe->bhke", A, g_z)  # ... at each head's values
        c = torch.einsum("bhke,hde->bkd", g_v, W_V)  # ... at ln1's output
        const += g.sum(1) @ b_O + torch.einsum("bhke,he->b", g_v, b_V) + self.run.ln1[l].bias_term(c)
        return self.run.ln1[l].pull(c)


def row_bytes(cfg, n_pos: int, n_sources: int) -> int:
    """Bytes one target row holds during a chunk's pull-back: its gradient and the attention intermediates
    (float32), and its row of edges."""
    heads = cfg.n_heads * cfg.d_head
    return 4 * (n_pos * (4 * cfg.d_model + 2 * heads) + n_sources)


__all__ = ["Backward", "row_bytes"]
