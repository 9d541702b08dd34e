"""Steering with generation: hold an intervention at a site and positions while the model generates, at several
strengths, beside an equal-norm random control; with a task, read the answer's metric and top-1 at the prompt's
last token under the same intervention (docs/architecture.md §6).

Interventions:
- `AddVector(site, vector)`: the site activation x -> x + alpha * vector at the chosen positions. The tool passes a
  feature's decoder direction scaled to unit norm, so alpha is the norm of what is added, in the site's own units
  (`SteerStudy.site_norm` is the mean norm of x over the prompts' tokens, to read alpha against).
- `MeanDiff(site, positive, negative)`: the vector is mean(x at the last token of `positive`) - mean(... of
  `negative`), added raw: alpha = 1 adds the whole difference.
- `HeadAblation(heads, mode)`: each head's output z (before W_O) set to 0 or to its mean over the prompts' tokens.
  There is no strength: `alphas` is ignored and the one "alpha" reported is 1.

Controls: for a vector, a random direction (seeded) of the same norm at the same alphas; for an ablation, as many
heads drawn at random (seeded) from the heads not ablated (fewer when too few remain: `control_heads` says).

Positions: "all" (every token, generated ones included), "last" (the prompt's last token and every generated
token), or per-prompt token indices (prompt tokens only). Generation re-runs the whole prefix at every step (no
KV cache), so the intervention is applied exactly as it is at the prompt; greedy by default, else multinomial
sampling at `temperature` from a generator seeded with `seed` for every variant (so alpha = 0 reproduces the
baseline's samples exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import binomtest

from ..core import Progress, ShouldCancel, Site, check_cancelled, ci_dict, group_by_length
from ..core.footprint import F32
from ..core.metrics import full_logits

MAX_NEW_TOKENS = 64
VECTOR_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_in", "mlp_post")


@dataclass
class AddVector:
    """Add alpha * vector at `site` (a whole-vector site; `vector` has the site's width)."""

    site: Site
    vector: torch.Tensor
    unit: bool = False  # scale the vector to norm 1 first (a feature's direction: alpha in site units)


@dataclass
class MeanDiff:
    """The vector mean(site at the last token of positive) - mean(... of negative), added raw × alpha."""

    site: Site
    positive: Sequence[Sequence[int]]
    negative: Sequence[Sequence[int]]


@dataclass
class HeadAblation:
    """Zero- or mean-ablate heads [(layer, head)] at the chosen positions (alphas ignored)."""

    heads: Sequence[tuple[int, int]]
    mode: str = "zero"


@dataclass
class SteerStudy:
    """What `steer` measured. `variants` are "steered" and "control"; `alphas` the strengths (one, 1.0, for an
    ablation). Token lists are the generated continuations (prompt excluded). `site_norm`: the mean norm of the site's
    activation over the prompts' tokens (of the ablated heads' z for an ablation), to read alpha x vector_norm by."""

    kind: str
    hook: str
    alphas: list[float]
    vector_norm: float | None
    site_norm: float
    control: str
    generations: list[dict] = field(default_factory=list)  # per generated prompt: baseline, steered/control by alpha
    divergence: dict[str, list[float]] = field(default_factory=dict)  # variant -> per alpha: share of generated
    # tokens that differ from the baseline continuation (mean over the generated prompts)
    # with answers: per-example columns and their summaries
    baseline_metric: np.ndarray | None = None     # [n]
    baseline_top1: np.ndarray | None = None       # [n]
    metric: dict[str, np.ndarray] = field(default_factory=dict)    # variant -> [A, n]
    top1: dict[str, np.ndarray] = field(default_factory=dict)      # variant -> [A, n]
    summary: dict[str, list[dict]] = field(default_factory=dict)   # variant -> per alpha {metric, flip, to_cf}
    baseline: dict | None = None                                   # {metric, accuracy}
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # steered / control vectors (additive kinds)
    control_heads: list[tuple[int, int]] = field(default_factory=list)
    forwards: int = 0


def steering_footprint(cfg, n: int, seq: int, alphas: int = 1, batch: int = 16) -> float:
    """Peak bytes: the larger of a metric batch (up to `batch` prompts) and a generation batch (the baseline and
    every alpha of the steered and control variants of one prompt): its residual activations in flight and its
    last-position logits. `cfg`: a HookedTransformerConfig."""
    b = max(min(batch, n), 1 + 2 * alphas)
    return b * (seq * 4 * cfg.d_model * cfg.n_layers + cfg.d_vocab) * F32


def rate_ci(hits: np.ndarray) -> dict:
    """{"mean", "ci95", "n"} of a 0/1 vector: the share with its Wilson score interval (defined at 0 and 1)."""
    k, n = int(np.sum(hits)), int(len(hits))
    if n == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0}
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return {"mean": k / n, "ci95": [float(ci.low), float(ci.high)], "n": n}


# ------------------------------------------------------------------ hooks

Mask = torch.Tensor  # [b, T] bool: where the intervention is held
# One row's intervention: None (no hook), ("vector", site, alpha * vector) or ("ablate", heads, means)
RowEdit = tuple | None


def _vector_hook(vectors: torch.Tensor, mask: Mask):
    """Add vectors[r] (the site's trailing shape, flattened) to row r of the site wherever mask[r] is set."""
    def hook(act, hook):
        v = vectors.to(act.device, act.dtype).reshape(act.shape[0], *act.shape[2:])
        m = mask.to(act.device, act.dtype).reshape(*mask.shape, *([1] * (act.dim() - 2)))
        return act + m * v[:, None]

    return hook


def _ablation_hook(layer: int, rows: list[tuple[int, Sequence[int], dict | None]], mask: Mask):
    """Set the listed heads of row r of `layer`'s z to 0 (means None) or to their mean, wherever mask[r] is set."""
    def hook(act, hook):
        act = act.clone()
        for r, hs, means in rows:
            m = mask[r].to(act.device)
            for h in hs:
                sub = act[r, :, h]  # a view: writing it writes act
                sub[m] = 0.0 if means is None else means[(layer, h)].to(act.device, act.dtype)
        return act

    return hook


def _row_hooks(edits: Sequence[RowEdit], mask: Mask) -> list:
    """The forward hooks that apply edits[r] to row r of a batch (rows without an edit run untouched)."""
    hooks: list = []
    vec = [(r, e) for r, e in enumerate(edits) if e is not None and e[0] == "vector"]
    if vec:
        site = vec[0][1][1]
        vectors = torch.zeros(len(edits), vec[0][1][2].numel())
        for r, (_, _, v) in vec:
            vectors[r] = v.flatten()
        hooks.append((site.hook, _vector_hook(vectors, mask)))
    by_layer: dict[int, list] = {}
    for r, e in enumerate(edits):
        if e is not None and e[0] == "ablate":
            _, heads, means = e
            for layer in sorted({l for l, _ in heads}):
                by_layer.setdefault(layer, []).append((r, [h for l, h in heads if l == layer], means))
    hooks += [(Site("z", layer, head=rows[0][1][0]).hook, _ablation_hook(layer, rows, mask))
              for layer, rows in by_layer.items()]
    return hooks


def _edit(kind: str, thing, alpha: float) -> RowEdit:
    """One variant's edit at strength alpha (an ablation has none)."""
    if kind == "ablate_heads":
        heads, means = thing
        return ("ablate", heads, means)
    site, v = thing
    return ("vector", site, alpha * v)


def _mask(positions, rows: Sequence[int], prompt_len: int, T: int) -> Mask:
    """[len(rows), T]: where to intervene for these prompts (all of length prompt_len) at sequence length T."""
    m = torch.zeros(len(rows), T, dtype=torch.bool)
    if positions == "all":
        m[:] = True
    elif positions == "last":
        m[:, prompt_len - 1:] = True
    else:
        for r, i in enumerate(rows):
            m[r, list(positions[i])] = True
    return m


# ------------------------------------------------------------------ the pieces

@torch.no_grad()
def _site_stats(model, site: Site, token_lists, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(last-token activations [n, ...], mean activation over every token [...], mean norm over every token of the
    last axis: [] at a whole-vector site, [n_heads] at hook_z). The forward stops after the site's block."""
    hook = site.hook
    device = model.cfg.device
    last = [None] * len(token_lists)
    total, count, norms = None, 0, 0.0
    for _, idx in sorted(group_by_length(token_lists).items()):
        for s in range(0, len(idx), batch_size):
            ch = idx[s:s + batch_size]
            _, cache = model.run_with_cache(torch.tensor([list(token_lists[i]) for i in ch], device=device),
                                            names_filter=hook, return_type=None,
                                            stop_at_layer=min(site.layer + 1, model.cfg.n_layers))
            a = cache[hook].float().cpu()
            for r, i in enumerate(ch):
                last[i] = a[r, -1]
            flat = a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])
            total = flat.sum(0) if total is None else total + flat.sum(0)
            count += flat.shape[0]
            norms = norms + flat.norm(dim=-1).sum(0)
    return torch.stack(last), total / count, norms / count


def _resolve(model, intervention, token_lists, seed: int, batch_size: int):
    """(kind, hook, steered thing, control thing, site_norm, vector_norm, control label)."""
    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(intervention, HeadAblation):
        cfg = model.cfg
        heads = list(dict.fromkeys((int(layer), int(h)) for layer, h in intervention.heads))  # once each
        for layer, h in heads:
            if not (0 <= layer < cfg.n_layers and 0 <= h < cfg.n_heads):
                raise ValueError(f"head L{layer}H{h} does not exist (layers 0..{cfg.n_layers - 1}, heads "
                                 f"0..{cfg.n_heads - 1})")
        if intervention.mode not in ("zero", "mean"):
            raise ValueError(f"ablation mode {intervention.mode!r}: 'zero' or 'mean'")
        others = [(layer, h) for layer in range(cfg.n_layers) for h in range(cfg.n_heads) if (layer, h) not in heads]
        pick = torch.randperm(len(others), generator=gen)[:len(heads)].tolist()
        control = sorted(others[i] for i in pick)
        means, head_norms = {}, {}
        for layer in sorted({x[0] for x in heads + control}):
            _, mean, norm = _site_stats(model, Site("z", layer, head=0), token_lists, batch_size)
            means.update({(layer, h): mean[h] for h in range(cfg.n_heads)})
            head_norms.update({(layer, h): float(norm[h]) for h in range(cfg.n_heads)})
        used = means if intervention.mode == "mean" else None
        return ("ablate_heads", Site("z", heads[0][0], head=heads[0][1]).hook, (heads, used), (control, used),
                float(np.mean([head_norms[x] for x in heads])), None,
                f"{len(control)} random other heads, {intervention.mode}-ablated")
    if isinstance(intervention, MeanDiff):
        if not intervention.positive or not intervention.negative:
            raise ValueError("mean_diff needs at least one positive and one negative prompt")
        pos, _, _ = _site_stats(model, intervention.site, intervention.positive, batch_size)
        neg, _, _ = _site_stats(model, intervention.site, intervention.negative, batch_size)
        intervention = AddVector(intervention.site, pos.mean(0) - neg.mean(0))
        kind = "mean_diff"
    else:
        kind = "feature"
    v = intervention.vector.detach().float().cpu().flatten()
    if not torch.isfinite(v).all() or float(v.norm()) == 0.0:
        raise ValueError("the steering vector is zero or not finite")
    if intervention.unit:
        v = v / v.norm()
    _, _, site_norm = _site_stats(model, intervention.site, token_lists, batch_size)
    r = torch.randn(v.shape, generator=gen)
    r = r * (v.norm() / r.norm())
    return (kind, intervention.site.hook, (intervention.site, v), (intervention.site, r), float(site_norm),
            float(v.norm()), "random direction of equal norm (seeded)")


@torch.no_grad()
def _last_logits(model, toks: torch.Tensor, hooks: list) -> torch.Tensor:
    """[b, d_vocab] logits at the last position with the hooks on; only that position is unembedded."""
    with model.hooks(fwd_hooks=hooks):
        resid = model(toks, return_type=None, stop_at_layer=model.cfg.n_layers)[:, -1:]
    return full_logits(model, resid[:, 0]).float().cpu()  # the model's own output: its soft cap applied


@torch.no_grad()
def _generate(model, tokens: Sequence[int], prompt: int, positions, n_new: int, edits: Sequence[RowEdit],
              sample: bool, temperature: float, seed: int) -> torch.Tensor:
    """[len(edits), n_new] ids generated from one prompt, one row per edit, all rows in one batch: the whole prefix
    re-run at every step with each row's edit. Sampling draws each row from its own generator seeded `seed`, so a
    row whose edit changes nothing reproduces the unedited row exactly."""
    rows = len(edits)
    gens = [torch.Generator(device="cpu").manual_seed(int(seed)) for _ in range(rows)]
    p = len(tokens)
    seq = torch.tensor([list(tokens)] * rows, device=model.cfg.device)
    for _ in range(n_new):
        logits = _last_logits(model, seq, _row_hooks(edits, _mask(positions, [prompt] * rows, p, seq.shape[1])))
        if sample:
            probs = torch.softmax(logits / temperature, -1)
            nxt = torch.stack([torch.multinomial(probs[r], 1, generator=gens[r])[0] for r in range(rows)])
        else:
            nxt = logits.argmax(-1)
        seq = torch.cat([seq, nxt[:, None].to(seq.device)], 1)
    return seq[:, p:].cpu()


@torch.no_grad()
def _final(model, token_lists, positions, edit: RowEdit, batch_size: int) -> torch.Tensor:
    """[n, d_vocab] logits at each prompt's last token with the same edit on every prompt (prompt tokens only)."""
    out = torch.empty(len(token_lists), model.cfg.d_vocab)
    for length, idx in sorted(group_by_length(token_lists).items()):
        for s in range(0, len(idx), batch_size):
            ch = idx[s:s + batch_size]
            toks = torch.tensor([list(token_lists[i]) for i in ch], device=model.cfg.device)
            out[ch] = _last_logits(model, toks, _row_hooks([edit] * len(ch), _mask(positions, ch, length, length)))
    return out


def steer(model, intervention: AddVector | MeanDiff | HeadAblation, token_lists: Sequence[Sequence[int]],
          alphas: Sequence[float], positions: str | Sequence[Sequence[int]] = "last", max_new_tokens: int = 16,
          n_generate: int = 4, sample: bool = False, temperature: float = 1.0, seed: int = 0,
          answers: Sequence[int] | None = None, cf_answers: Sequence[int] | None = None, metric=None,
          batch_size: int = 16, progress: Progress | None = None,
          should_cancel: ShouldCancel | None = None) -> SteerStudy:
    """Generate `max_new_tokens` for the first `n_generate` prompts without and with the intervention at each alpha
    (and the control); with `answers` (and `cf_answers`, `metric`: a methods.core metric over the prompts), read the
    metric and top-1 at every prompt's last token under each. See the module docstring for what alpha means."""
    if not token_lists:
        raise ValueError("no prompts")
    if isinstance(positions, str) and positions not in ("all", "last"):
        raise ValueError(f"positions {positions!r}: 'all', 'last' or per-prompt indices")
    if not isinstance(positions, str) and len(positions) != len(token_lists):
        raise ValueError("positions: one list of indices per prompt")
    if not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max_new_tokens {max_new_tokens}: at most {MAX_NEW_TOKENS}")
    longest = max(len(t) for t in token_lists) + max_new_tokens
    if longest > model.cfg.n_ctx:
        raise ValueError(f"prompt plus {max_new_tokens} new tokens is {longest} tokens; the model takes "
                         f"{model.cfg.n_ctx}")
    if sample and not temperature > 0:
        raise ValueError("temperature must be > 0 when sampling")
    kind, hook, steered, control, site_norm, vnorm, control_label = _resolve(model, intervention, token_lists, seed,
                                                                             batch_size)
    alphas = [1.0] if kind == "ablate_heads" else [float(a) for a in alphas]
    if not alphas or not all(np.isfinite(alphas)):
        raise ValueError("alphas: at least one, all finite")
    study = SteerStudy(kind=kind, hook=hook, alphas=alphas, vector_norm=vnorm, site_norm=site_norm,
                       control=control_label)
    if kind == "ablate_heads":
        study.control_heads = list(control[0])
    else:
        study.vectors = {"steered": steered[1], "control": control[1]}
    variants = {"steered": steered, "control": control}
    n_gen = min(n_generate, len(token_lists)) if max_new_tokens > 0 else 0
    steps = n_gen + (1 + 2 * len(alphas) if answers is not None else 0)
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        check_cancelled(should_cancel, "steer")
        if progress:
            progress(done / max(steps, 1), what)

    labels = [(name, a) for name in variants for a in alphas]  # rows after the baseline, one batch per prompt
    for i in range(n_gen):
        out = _generate(model, token_lists[i], i, positions, max_new_tokens,
                        [None] + [_edit(kind, variants[name], a) for name, a in labels], sample, temperature, seed)
        study.forwards += max_new_tokens * (1 + len(labels))
        row = {"prompt": i, "baseline": out[0].tolist(), **{name: [] for name in variants}}
        for (name, _), ids in zip(labels, out[1:]):
            row[name].append(ids.tolist())
        study.generations.append(row)
        tick(f"generated prompt {i + 1}/{n_gen} (baseline, {len(labels)} steered / control)")
    if study.generations:
        study.divergence = {name: [float(np.mean([np.mean(np.asarray(g[name][k]) != np.asarray(g["baseline"]))
                                                  for g in study.generations])) for k in range(len(alphas))]
                            for name in variants}
    if answers is not None:
        _answers(study, model, token_lists, positions, kind, variants, answers, cf_answers, metric, seed, batch_size,
                 tick)
    return study


def _answers(study: SteerStudy, model, token_lists, positions, kind, variants, answers, cf_answers, metric, seed,
             batch_size, tick) -> None:
    """The metric and top-1 at each prompt's last token, clean and under every variant and alpha, with CIs."""
    n = len(token_lists)
    idx = torch.arange(n)
    ans = np.asarray(answers)
    cf = np.asarray(cf_answers) if cf_answers is not None else None
    clean = _final(model, token_lists, positions, None, batch_size)
    study.forwards += n
    tick("reading the answer (clean)")
    study.baseline_metric = metric.from_logits(model, clean, idx).numpy() if metric is not None else None
    study.baseline_top1 = clean.argmax(-1).numpy()
    study.baseline = {"accuracy": rate_ci(study.baseline_top1 == ans),
                      "metric": ci_dict(study.baseline_metric, seed=seed) if metric is not None else None}
    for name, thing in variants.items():
        ms, tops, rows = [], [], []
        for a in study.alphas:
            logits = _final(model, token_lists, positions, _edit(kind, thing, a), batch_size)
            study.forwards += n
            tick(f"reading the answer ({name}, alpha {a:g})")
            top = logits.argmax(-1).numpy()
            m = metric.from_logits(model, logits, idx).numpy() if metric is not None else np.full(n, np.nan)
            ms.append(m)
            tops.append(top)
            rows.append({"alpha": a, "metric": ci_dict(m, seed=seed) if metric is not None else None,
                         "flip": rate_ci(top != ans),
                         "to_cf": rate_ci(top == cf) if cf is not None else None})
        study.metric[name], study.top1[name], study.summary[name] = np.stack(ms), np.stack(tops), rows


__all__ = ["AddVector", "HeadAblation", "MAX_NEW_TOKENS", "MeanDiff", "SteerStudy", "rate_ci", "steer",
           "steering_footprint"]
