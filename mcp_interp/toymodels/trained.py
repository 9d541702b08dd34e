"""Toy models trained in the project: `toy/induction-2l` and `toy/parens-classifier`.

Both are trained on the CPU from a fixed seed on first use (well under a minute each on 2 cores) and
cached under the model cache dir as `toy/<name>-<key>/{model.safetensors, config.json}`, where
`<key>` hashes the model config, the training config and `TRAIN_VERSION`: change any of them and the
model retrains; the second load only reads the file. The config.json also records the training
metrics (accuracies, head scores) and time.

- `toy/induction-2l`: 2-layer attention-only transformer (d_model 64, 4 heads of 16, LayerNorm,
  shortformer positions, n_ctx 32) over `CharTokenizer(TOY_ALPHABET)`, trained on noise letters
  followed by a random letter segment and its repeat (loss on the repeat only). Layer 0 does
  previous-token attention and layer 1 induction; `induction_heads(model)` scores every head from
  its attention pattern. In the reference run (seed 0, ~35 s on one core) the model solves the
  built-in `induction` task (top-1 1.0); all four layer-1 heads are induction heads (scores
  0.85-0.91, top L1H1) and the previous-token role is shared by the layer-0 heads, each attending
  about half to t-1 and the rest to t and t-2 (scores 0.36-0.57, top L0H3): a redundant, blurry
  circuit, not one crisp head per role. The blur looks like an optimum of this objective rather
  than undertraining: it stays at ~0.5 over 5000 steps, and an attention-entropy penalty or an
  extra skip-bigram task did not sharpen it (while layer 0 learns a 0.9 previous-token pattern in
  300 steps when supervised directly, so it is not a capacity limit).
- `toy/parens-classifier`: 2-layer transformer with MLPs (d_model 64) that reads a string of
  parentheses followed by '=' and predicts 'y' (balanced) or 'n' at the '=' position: the built-in
  `parens` task. Trained on even lengths 2..16 with balanced strings oversampled to 50% and hard
  negatives (as many '(' as ')' but unbalanced) to 25%; a fixed quarter of the 8-paren strings is
  held out of training and reported separately.

Nothing here imports the task layer (models/ imports nothing else of ours); the task-level checks
live in tests/test_toy_models.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ..models.tokenizers import CharTokenizer
from .common import TOY_ALPHABET, seeded_model

log = logging.getLogger(__name__)

TRAIN_VERSION = 1  # bump when a training procedure changes in a way the configs do not capture
LETTERS = "abcdefghijklmnopqrstuvwxyz"
_TOK = {c: i for i, c in enumerate(TOY_ALPHABET)}
_KEY_LOCKS: dict[str, threading.Lock] = {}
_KEY_LOCKS_GUARD = threading.Lock()


# ---------------------------------------------------------------- cache

def _default_cache_dir() -> Path:
    from ..models.loaders import default_cache_dir

    return default_cache_dir()


def config_key(name: str, model_cfg: dict, train_cfg: dict) -> str:
    blob = json.dumps({"version": TRAIN_VERSION, "name": name, "model": model_cfg, "train": train_cfg},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_entry(name: str, model_cfg: dict, train_cfg: dict, cache_dir: str | Path | None = None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir else _default_cache_dir()
    return root / "toy" / f"{name}-{config_key(name, model_cfg, train_cfg)}"


def _load_entry(entry: Path) -> tuple[HookedTransformer, dict] | None:
    if not ((entry / "config.json").is_file() and (entry / "model.safetensors").is_file()):
        return None
    try:
        from safetensors.torch import load_file

        info = json.loads((entry / "config.json").read_text())
        # seeded_model: the throwaway init must not consume the caller's global RNG
        model = seeded_model(HookedTransformerConfig(**info["model_config"]), seed=0)
        model.load_state_dict(load_file(str(entry / "model.safetensors")), strict=True)
        return model, info
    except Exception as e:  # a corrupt cache must not make the model unloadable: retrain
        log.warning("ignoring unreadable toy model cache %s: %s", entry, e)
        return None


def _save_entry(entry: Path, model: HookedTransformer, info: dict) -> None:
    """Atomic: write a temp folder beside the entry, then rename it into place."""
    from safetensors.torch import save_file

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.parent / f".{entry.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        if entry.exists():
            if _load_entry(entry) is not None:  # another process finished first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(entry, ignore_errors=True)  # a corrupt entry: replace it
        os.replace(tmp, entry)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("could not cache toy model at %s: %s", entry, e)


def load_or_train(name: str, model_cfg: dict, train_cfg: dict,
                  train_fn: Callable[[HookedTransformer, dict], dict],
                  cache_dir: str | Path | None = None, *, use_cache: bool = True) -> tuple[HookedTransformer, dict]:
    """The cached model for (name, configs), training it with `train_fn(model, train_cfg) -> metrics` if absent.

    Returns (model on CPU in eval mode, info dict as stored in config.json).
    """
    entry = cache_entry(name, model_cfg, train_cfg, cache_dir)
    with _KEY_LOCKS_GUARD:
        lock = _KEY_LOCKS.setdefault(str(entry), threading.Lock())
    with lock:  # one trainer per entry in this process; others wait and then load the file
        if use_cache:
            hit = _load_entry(entry)
            if hit is not None:
                hit[0].eval()
                return hit
        model = seeded_model(HookedTransformerConfig(**model_cfg), seed=train_cfg["seed"])
        t0 = time.perf_counter()
        # Builders may be called under no_grad / inference_mode by a caller; training needs grads.
        # One intra-op thread: as fast as two for these tiny models, immune to a busy second core, and
        # the same reduction order on every machine (so the same seed gives the same weights).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(train_cfg["seed"])
                model.train()
                metrics = train_fn(model, train_cfg)
        finally:
            torch.set_num_threads(threads)
        model.eval()
        info = {"name": name, "key": entry.name.rsplit("-", 1)[-1], "train_version": TRAIN_VERSION,
                "model_config": model_cfg, "train_config": train_cfg, "metrics": metrics,
                "train_seconds": round(time.perf_counter() - t0, 2), "torch_version": torch.__version__,
                "torch_threads": 1}
        log.info("trained toy/%s in %.1fs: %s", name, info["train_seconds"], metrics)
        if use_cache:
            _save_entry(entry, model, info)
        return model, info


def _optimise(opt, loss, step: int, cfg: dict) -> float:
    """One scheduled AdamW step on `loss`; returns the loss value."""
    _adamw_step_schedule(opt, step, cfg["steps"], cfg["lr"], cfg["warmup"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _adamw_step_schedule(opt: torch.optim.Optimizer, step: int, steps: int, lr: float, warmup: int) -> None:
    frac = min(1.0, (step + 1) / warmup) if warmup else 1.0
    decay = 0.5 * (1 + torch.cos(torch.tensor(step / steps * torch.pi)).item())  # cosine to 0
    for g in opt.param_groups:
        g["lr"] = lr * frac * (0.1 + 0.9 * decay)


# ---------------------------------------------------------------- induction-2l

# Shortformer positions (added to the query/key inputs only, as in TransformerLens' own attn-only
# toy models): with learned positions in the residual stream (`standard`) this data trains far more
# slowly and the model finds positional shortcuts instead of a previous-token head.
INDUCTION_MODEL_CFG: dict[str, Any] = dict(
    n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=None, attn_only=True, n_ctx=32,
    d_vocab=len(TOY_ALPHABET), act_fn="relu", normalization_type="LN", positional_embedding_type="shortformer",
    default_prepend_bos=False, model_name="toy-induction-2l", device="cpu",
)
# Each batch: random noise letters (0..seq_len-2P of them), then P i.i.d. random letters, then the
# same P letters again; loss on the repeat only. The noise prefix moves the repeat around so that
# only a relative mechanism (previous-token head + induction head) works.
INDUCTION_TRAIN_CFG: dict[str, Any] = dict(
    seed=0, steps=1500, batch=64, seq_len=32, lr=3e-3, weight_decay=0.01, warmup=50, min_prefix=4, max_prefix=13,
)


def _device(model: HookedTransformer) -> torch.device:
    return next(model.parameters()).device


def _letter_ids(alphabet: str = LETTERS) -> torch.Tensor:
    return torch.tensor([_TOK[c] for c in alphabet])


def repeated_batch(batch: int, prefix_len: int, gen: torch.Generator) -> torch.Tensor:
    """[batch, 2*prefix_len]: a prefix of distinct random lowercase letters, then the prefix again."""
    ids = _letter_ids()
    perm = torch.argsort(torch.rand(batch, len(ids), generator=gen), dim=1)[:, :prefix_len]
    prefix = ids[perm]
    return torch.cat([prefix, prefix], dim=1)


def _train_induction(model: HookedTransformer, cfg: dict) -> dict:
    gen = torch.Generator().manual_seed(cfg["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    losses = []
    ids, b = _letter_ids(), cfg["batch"]
    for step in range(cfg["steps"]):
        p = int(torch.randint(cfg["min_prefix"], cfg["max_prefix"] + 1, (1,), generator=gen))
        a = int(torch.randint(0, cfg["seq_len"] - 2 * p + 1, (1,), generator=gen))
        seg = ids[torch.randint(len(ids), (b, p), generator=gen)]
        noise = ids[torch.randint(len(ids), (b, a), generator=gen)]
        toks = torch.cat([noise, seg, seg], dim=1)
        logits = model(toks)  # [b, a+2p, vocab]
        # predictions at positions a+p .. a+2p-2 (inside the repeat) of the tokens after them
        pred = logits[:, a + p:-1].reshape(-1, logits.shape[-1])
        loss = torch.nn.functional.cross_entropy(pred, toks[:, a + p + 1:].reshape(-1))
        losses.append(_optimise(opt, loss, step, cfg))
    model.eval()
    with torch.no_grad():
        acc = induction_task_accuracy(model)
        heads = induction_heads(model)
    return {"final_loss": round(sum(losses[-50:]) / 50, 4), "task_accuracy": acc,
            "prev_token_head": heads["prev_token_head"], "induction_head": heads["induction_head"]}


@torch.no_grad()
def induction_task_accuracy(model: HookedTransformer, n: int = 512, seed: int = 1234) -> float:
    """Top-1 accuracy on the built-in task's prompts: 6 distinct letters, the first 5 again -> the 6th."""
    gen = torch.Generator().manual_seed(seed)
    full = repeated_batch(n, 6, gen)
    toks = full[:, :11].to(_device(model))
    pred = model(toks)[:, -1].argmax(-1).cpu()
    return round(float((pred == full[:, 11]).float().mean()), 4)


@torch.no_grad()
def induction_heads(model: HookedTransformer, n: int = 128, prefix_len: int = 10, seed: int = 0,
                    threshold: float = 0.4) -> dict:
    """Previous-token and induction heads, found from attention patterns on repeated random letters.

    Scores (means over `n` sequences of `prefix_len` distinct letters followed by the same letters):
      prev_token_scores[l][h]: attention from position t to t-1 (t = 1 .. 2*prefix_len-1);
      induction_scores[l][h]:  attention from the second occurrence of a token (t = prefix_len ..
                               2*prefix_len-1) to the position after its first occurrence
                               (t - prefix_len + 1).
    Returns both score grids, the top head of each kind anywhere in the model
    (`{"layer", "head", "score", "hook"}`), and every head scoring at least `threshold`.
    Works for any model over `CharTokenizer(TOY_ALPHABET)` (token id = index in the alphabet).
    """
    gen = torch.Generator().manual_seed(seed)
    toks = repeated_batch(n, prefix_len, gen).to(_device(model))
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(toks, names_filter=lambda nm: nm in names)
    P = prefix_len
    t = torch.arange(1, 2 * P)
    ti = torch.arange(P, 2 * P)
    prev, ind = [], []
    for l in range(model.cfg.n_layers):
        pat = cache[names[l]].float().cpu()  # [b, head, q, k]
        prev.append(pat[:, :, t, t - 1].mean(dim=(0, 2)).tolist())
        ind.append(pat[:, :, ti, ti - P + 1].mean(dim=(0, 2)).tolist())

    def top(grid: list[list[float]]) -> dict:
        l, h = max(((l, h) for l in range(len(grid)) for h in range(len(grid[l]))), key=lambda lh: grid[lh[0]][lh[1]])
        return {"layer": l, "head": h, "score": round(grid[l][h], 4), "hook": f"blocks.{l}.attn.hook_z"}

    def above(grid: list[list[float]]) -> list[dict]:
        return [{"layer": l, "head": h, "score": round(s, 4), "hook": f"blocks.{l}.attn.hook_z"}
                for l, row in enumerate(grid) for h, s in enumerate(row) if s >= threshold]

    return {"prev_token_scores": [[round(s, 4) for s in r] for r in prev],
            "induction_scores": [[round(s, 4) for s in r] for r in ind],
            "prev_token_head": top(prev), "induction_head": top(ind),
            "prev_token_heads": above(prev), "induction_heads": above(ind),
            "threshold": threshold, "prefix_len": prefix_len, "n": n}


def build_induction_2l(cache_dir: str | Path | None = None, seed: int = 0) -> tuple[HookedTransformer, CharTokenizer]:
    """The induction model trained from `seed` (initialisation and data order; seed 0 is toy/induction-2l)."""
    model, _ = load_or_train("induction-2l", INDUCTION_MODEL_CFG, {**INDUCTION_TRAIN_CFG, "seed": seed},
                             _train_induction, cache_dir)
    return model, CharTokenizer(TOY_ALPHABET)


# ---------------------------------------------------------------- parens-classifier

PARENS_MODEL_CFG: dict[str, Any] = dict(
    n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, attn_only=False, n_ctx=24,
    d_vocab=len(TOY_ALPHABET), act_fn="relu", normalization_type="LN", positional_embedding_type="standard",
    default_prepend_bos=False, model_name="toy-parens-classifier", device="cpu",
)
PARENS_TRAIN_CFG: dict[str, Any] = dict(
    seed=0, steps=1500, batch=128, lr=3e-3, weight_decay=0.01, warmup=50, lengths=[2, 4, 6, 8, 10, 12, 14, 16],
    p_len8=0.4, p_balanced=0.5, p_hard=0.25, holdout_frac=0.25, holdout_seed=7,
)


def is_balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += 1 if ch == "(" else -1
        if depth < 0:
            return False
    return depth == 0


def _all_strings(n: int) -> list[str]:
    return [format(i, f"0{n}b").replace("0", "(").replace("1", ")") for i in range(2 ** n)]


def parens_split(cfg: dict = PARENS_TRAIN_CFG) -> dict[str, list[str]]:
    """The 8-paren strings by role: held-out (never trained on) balanced / unbalanced, and the rest.

    Stratified: `holdout_frac` of the balanced strings, of the hard negatives (equal counts) and of
    the other negatives, chosen by `holdout_seed`.
    """
    gen = torch.Generator().manual_seed(cfg["holdout_seed"])
    strings = _all_strings(8)
    groups = {"balanced": [s for s in strings if is_balanced(s)],
              "hard": [s for s in strings if s.count("(") == 4 and not is_balanced(s)],
              "other": [s for s in strings if s.count("(") != 4]}
    out: dict[str, list[str]] = {"heldout_balanced": [], "heldout_unbalanced": [], "train": []}
    for g, items in groups.items():
        perm = torch.randperm(len(items), generator=gen).tolist()
        k = max(1, round(cfg["holdout_frac"] * len(items)))
        held = [items[i] for i in perm[:k]]
        out["heldout_balanced" if g == "balanced" else "heldout_unbalanced"] += held
        out["train"] += [items[i] for i in perm[k:]]
    return out


def _parens_pools(cfg: dict) -> dict[int, dict[str, list[str]]]:
    held = set(parens_split(cfg)["heldout_balanced"]) | set(parens_split(cfg)["heldout_unbalanced"])
    pools = {}
    for n in cfg["lengths"]:
        strings = [s for s in _all_strings(n) if s not in held]
        pools[n] = {"balanced": [s for s in strings if is_balanced(s)],
                    "hard": [s for s in strings if s.count("(") == n // 2 and not is_balanced(s)],
                    "any_unbalanced": [s for s in strings if not is_balanced(s)]}
    return pools


def parens_tokens(strings: list[str]) -> torch.Tensor:
    """[batch, n+1] token ids of `s + '='` (all strings the same length)."""
    return torch.tensor([[_TOK[c] for c in s + "="] for s in strings])


def _train_parens(model: HookedTransformer, cfg: dict) -> dict:
    gen = torch.Generator().manual_seed(cfg["seed"])
    pools = _parens_pools(cfg)
    y, n_ = _TOK["y"], _TOK["n"]
    others = [n for n in cfg["lengths"] if n != 8]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])

    def pick(items: list[str], k: int) -> list[str]:
        return [items[i] for i in torch.randint(len(items), (k,), generator=gen).tolist()]

    losses = []
    for step in range(cfg["steps"]):
        if float(torch.rand(1, generator=gen)) < cfg["p_len8"]:
            n = 8
        else:
            n = others[int(torch.randint(len(others), (1,), generator=gen))]
        pool = pools[n]
        nb = int(cfg["batch"] * cfg["p_balanced"])
        nh = int(cfg["batch"] * cfg["p_hard"]) if pool["hard"] else 0
        strings = (pick(pool["balanced"], nb) + pick(pool["hard"], nh)
                   + pick(pool["any_unbalanced"], cfg["batch"] - nb - nh))
        target = torch.tensor([y if is_balanced(s) else n_ for s in strings])
        logits = model(parens_tokens(strings))[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, target)
        losses.append(_optimise(opt, loss, step, cfg))
    model.eval()
    return {"final_loss": round(sum(losses[-50:]) / 50, 4), **parens_accuracy(model, cfg)}


@torch.no_grad()
def parens_accuracy(model: HookedTransformer, cfg: dict = PARENS_TRAIN_CFG) -> dict:
    """Accuracies on 8-paren strings (answer: argmax over the whole vocabulary at '=').

    heldout_balanced_mix: mean of the accuracy on held-out balanced and held-out unbalanced strings
    (a 50/50 class mix); all_balanced_mix: the same over all 256 strings; all_raw: plain accuracy
    over all 256 strings (14 balanced).
    """
    split = parens_split(cfg)

    def acc(strings: list[str]) -> float:
        pred = model(parens_tokens(strings).to(_device(model)))[:, -1].argmax(-1).cpu()
        want = torch.tensor([_TOK["y"] if is_balanced(s) else _TOK["n"] for s in strings])
        return float((pred == want).float().mean())

    all8 = _all_strings(8)
    bal = [s for s in all8 if is_balanced(s)]
    unb = [s for s in all8 if not is_balanced(s)]
    return {
        "heldout_balanced": round(acc(split["heldout_balanced"]), 4),
        "heldout_unbalanced": round(acc(split["heldout_unbalanced"]), 4),
        "heldout_balanced_mix": round((acc(split["heldout_balanced"]) + acc(split["heldout_unbalanced"])) / 2, 4),
        "all_balanced_mix": round((acc(bal) + acc(unb)) / 2, 4),
        "all_raw": round(acc(all8), 4),
        "n_heldout": [len(split["heldout_balanced"]), len(split["heldout_unbalanced"])],
    }


def build_parens_classifier(cache_dir: str | Path | None = None) -> tuple[HookedTransformer, CharTokenizer]:
    model, _ = load_or_train("parens-classifier", PARENS_MODEL_CFG, PARENS_TRAIN_CFG, _train_parens, cache_dir)
    return model, CharTokenizer(TOY_ALPHABET)


# ---------------------------------------------------------------- registration

INDUCTION_DESCRIPTION = (
    "2-layer attention-only transformer (d_model 64, 4 heads of 16, LayerNorm, shortformer positions, n_ctx 32, "
    "char tokenizer) trained here on repeated random letters: previous-token attention in layer 0 (strongest "
    "L0H3, shared by all layer-0 heads) and induction heads in layer 1 (all four, strongest L1H1); scores from "
    "mcp_interp.toymodels.trained.induction_heads; solves the `induction` task"
)
PARENS_DESCRIPTION = (
    "2-layer transformer with MLPs (d_model 64, 4 heads, d_mlp 128, char tokenizer) trained here to "
    "classify balanced parentheses: '(()())()=' -> 'y' / 'n' at the '=' position (the `parens` task)"
)


def register() -> None:
    from ..models.toy import register_toy

    register_toy("induction-2l", build_induction_2l, INDUCTION_DESCRIPTION, meta={
        "kind": "trained", "task": "induction",
        "ground_truth": {
            "prev_token_layer": 0, "induction_layer": 1,
            "heads_from": "mcp_interp.toymodels.trained.induction_heads(model)",
            # Measured on the reference training run (seed 0, torch 2.13 CPU); recompute with
            # induction_heads(model) rather than trusting these if the weights hash differs.
            "reference": {"prev_token_scores": [[0.40, 0.47, 0.36, 0.57], [0.03, 0.03, 0.03, 0.03]],
                          "induction_scores": [[0.0, 0.0, 0.0, 0.0], [0.87, 0.91, 0.85, 0.85]],
                          "prev_token_head": "L0H3", "induction_head": "L1H1",
                          "note": "all 4 layer-1 heads are induction heads; the previous-token role is "
                                  "spread over the layer-0 heads (each ~half on t-1)"},
        },
        "train_config": INDUCTION_TRAIN_CFG,
    })
    # another seed of the same recipe: a pair of independently trained models for compare_features
    register_toy("induction-2l-s1", lambda: build_induction_2l(seed=1), INDUCTION_DESCRIPTION.replace(
        "trained here", "trained here from seed 1 (toy/induction-2l is seed 0)"), meta={
        "kind": "trained", "task": "induction", "train_config": {**INDUCTION_TRAIN_CFG, "seed": 1}})
    register_toy("parens-classifier", build_parens_classifier, PARENS_DESCRIPTION, meta={
        "kind": "trained", "task": "parens", "answer_position": "'=' (last token)", "answers": ["y", "n"],
        "train_config": PARENS_TRAIN_CFG,
    })
