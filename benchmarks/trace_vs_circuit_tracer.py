"""Our attribution graph (`methods.tracing.attribution_graph`, what `trace` builds) against circuit-tracer 0.5.0's
`attribute` on the same model, transcoders and prompt: the adjacency after matching node order, and the time.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/trace_vs_circuit_tracer.py [--repeats 3] [--setups a,b] [--keep]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/trace_vs_circuit_tracer.py --setups smollm2-topk \
        --transcoders STORE/corpus-shakespeare/smollm2-135m/train_transcoders/RUN_ID [--batch-size 64]

circuit-tracer pins transformers <= 4.57.3 and huggingface-hub < 1.0, so it cannot share our venv: it runs in a
throwaway one (`--venv`, default ~/.cache/mcp-interp/circuit-tracer-venv), created on the first run with
`python -m venv` and `pip install` of the pins in CT_PINS (torch 2.13.0 is this machine's local CPU wheel; nothing
else is large: about 1.6 GB in all, most of it torch) and reused while the pins are the same. Its side is
`benchmarks/circuit_tracer_side.py`, a worker process started once per setup, offline (HF_HUB_OFFLINE).

Setups (the first three: a small TransformerLens config with seeded random weights, norms and biases made
non-trivial, its parameters loaded on both sides; a prompt of random tokens after token 0, which circuit-tracer's side
calls "<bos>"; three MLP layers, all transcoded):
  gpt2-relu       LayerNorm, learned positions, GELU MLP; ReLU skip transcoders reading ln2.hook_normalized,
                  stored as sae-lens `SkipTranscoder` folders (ours: `methods.features.load_transcoder`) and as
                  circuit-tracer's `transcoder_set` (config.yaml + layer_L.safetensors, read by its own loader)
  llama-jumprelu  RMSNorm, rotary, grouped-query attention, gated SiLU MLP; JumpReLU skip transcoders reading
                  hook_resid_mid (sae-lens `JumpReLUSkipTranscoder` / circuit-tracer's set with thresholds)
  llama-topk      the same model; TopK skip transcoders in the layout `train_transcoders` writes (sparsify folders,
                  reading the MLP module's input, `save_transcoder`); circuit-tracer has no TopK loader, so its side
                  builds `SingleLayerTranscoder(ReLU then TopK(k))` from the same files with mlp.hook_in / hook_out
  smollm2-topk    (not in the default list; needs --transcoders) the bundled SmolLM2-135M with the TopK skip
                  transcoders of a `train_transcoders` run; circuit-tracer needs one for every layer, so its side
                  gives the layers without one a transcoder that never fires and has no skip (the MLP's whole output
                  is its error node, as ours treats a layer without a transcoder)
Transcoder weights of the small setups are random; each encoder bias or threshold is placed midway between two of
the latent's pre-activations on the prompt, so about a fifth of the latents fire per position and none sits at its
threshold.

Node matching: features by (layer, position, latent), error nodes by (layer, position), tokens by position, logits by
token id. circuit-tracer leaves position 0 out (its BOS): it zeroes the transcoders' activations and the error
vectors there, so our position-0 feature nodes have no counterpart and its position-0 error nodes are zero vectors;
both are left out of the compared block and what they carry on our side is printed. Everything else is compared:
printed max |difference| of the adjacency on the common block (target <= 1e-4), of the common features'
activations and of the logit nodes' weights. Time: our `attribution_graph` against circuit-tracer's `attribute`,
each timed in its own process around the call alone (model and transcoders loaded before), alternating which goes
first (benchmarks/_timing.py); both build the full graph (no pruning, every active feature, logit targets chosen
the same way: most likely tokens to 0.95 probability, at most 10). CPU only: the throwaway venv's torch is a CPU
build. Exit status 1 when a setup fails or misses the tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._timing import Run, Timings, add_repeats, report, timed  # noqa: E402
from benchmarks.machine import device_name  # noqa: E402

CT_PINS = ("torch==2.13.0", "circuit-tracer==0.5.0", "transformers==4.57.3", "transformer-lens==3.2.1",
           "huggingface-hub==0.36.2", "nnsight==0.8.1")
DEFAULT_VENV = Path.home() / ".cache" / "mcp-interp" / "circuit-tracer-venv"
SIDE = ROOT / "benchmarks" / "circuit_tracer_side.py"

MODELS = {
    "gpt2": dict(n_layers=3, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=32, d_vocab=96, act_fn="gelu",
                 normalization_type="LN", positional_embedding_type="standard", default_prepend_bos=False,
                 device="cpu", model_name="tiny-gpt2-random"),
    "llama": dict(n_layers=3, d_model=64, n_heads=4, n_key_value_heads=2, d_head=16, d_mlp=192, n_ctx=32,
                  d_vocab=96, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                  rotary_dim=16, gated_mlp=True, final_rms=True, default_prepend_bos=False, device="cpu",
                  model_name="tiny-llama-random"),
}
# setup -> (model, transcoder kind, the hook its sae-lens config names / the convention it reads)
SETUPS = {"gpt2-relu": ("gpt2", "relu", "ln2.hook_normalized"),
          "llama-jumprelu": ("llama", "jumprelu", "hook_resid_mid"),
          "llama-topk": ("llama", "topk", "mlp_input"),
          "smollm2-topk": ("smollm2", "topk", "mlp_input")}  # needs --transcoders; not in the default list
DEFAULT_SETUPS = "gpt2-relu,llama-jumprelu,llama-topk"
DEFAULT_PROMPT = "When Mary and John went to the store yesterday, John gave a drink to"
FIRE = 0.2  # the fraction of prompt positions at which each ReLU / JumpReLU latent fires


# ------------------------------------------------------------------ the throwaway venv


def ensure_venv(venv: Path) -> Path:
    """The venv's python, after creating it (or re-creating it when the pins changed)."""
    marker = venv / "mcp-interp-pins.txt"
    python = venv / "bin" / "python"
    pins = "\n".join(CT_PINS)
    if python.exists() and marker.is_file() and marker.read_text() == pins:
        print(f"circuit-tracer venv: {venv} (cached)", flush=True)
        return python
    print(f"circuit-tracer venv: creating {venv} ({' '.join(CT_PINS)}), about a minute", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *CT_PINS], check=True)
    marker.write_text(pins)
    return python


# ------------------------------------------------------------------ the model, the prompt and the transcoders


def build_model(name: str, seed: int):
    """A HookedTransformer of MODELS[name] with seeded random weights; norm weights around 1 and every bias
    non-zero, so that the norms' and biases' terms are exercised."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**MODELS[name])
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TransformerLens 3.9 points to TransformerBridge
        torch.manual_seed(seed)
        model = HookedTransformer(cfg, move_to_device=False)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith(".w"):  # a norm's weight
                    p.copy_(1 + 0.2 * torch.randn_like(p))
                elif pname.split(".")[-1].startswith(("b", "_b")):
                    p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def transcoder_inputs(model, tokens: torch.Tensor, hook: str) -> dict[int, torch.Tensor]:
    """Layer -> what a transcoder reading blocks.L.{hook} sees on the prompt [T, d]."""
    _, cache = model.run_with_cache(tokens[None])
    return {layer: cache[f"blocks.{layer}.{hook}"][0].detach().float() for layer in range(model.cfg.n_layers)}


def midway(pre: torch.Tensor, frac: float) -> torch.Tensor:
    """Per latent (columns of pre [T, F]), a value midway between two of its sorted values with about a `frac` of
    them above it: a threshold no value sits at."""
    s = pre.sort(0).values
    k = min(max(int(round((1 - frac) * s.shape[0])), 1), s.shape[0] - 1)
    return (s[k - 1] + s[k]) / 2


def random_weights(d: int, width: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """W_enc [d, F], W_dec [F, d], b_dec [d], W_skip [d, d] (the sae-lens orientation)."""
    return {"W_enc": torch.randn(d, width, generator=gen) / d ** 0.5,
            "W_dec": torch.randn(width, d, generator=gen) / width ** 0.5,
            "b_dec": 0.1 * torch.randn(d, generator=gen),
            "W_skip": 0.1 * torch.randn(d, d, generator=gen) / d ** 0.5}


def write_sae_lens_and_ct(model, tokens, kind: str, hook: str, width: int, root: Path, seed: int) -> dict:
    """ReLU / JumpReLU skip transcoders, one per layer: sae-lens folders ours/L{l} (hook blocks.l.{hook}) and
    circuit-tracer's transcoder_set ct/ (config.yaml, layer_l.safetensors: W_enc [F, d], threshold under
    activation_function.threshold)."""
    from sae_lens.saes.transcoder import JumpReLUSkipTranscoder as JumpSkip
    from sae_lens.saes.transcoder import JumpReLUSkipTranscoderConfig as JumpSkipConfig
    from sae_lens.saes.transcoder import SkipTranscoder, SkipTranscoderConfig
    from safetensors.torch import save_file

    d = model.cfg.d_model
    gen = torch.Generator().manual_seed(seed)
    x = transcoder_inputs(model, tokens, hook)
    (root / "ct").mkdir(parents=True)
    files = []
    for layer in range(model.cfg.n_layers):
        w = random_weights(d, width, gen)
        cut = midway(x[layer] @ w["W_enc"], FIRE)
        if kind == "relu":
            w["b_enc"] = -cut
            cls, cfg_cls = SkipTranscoder, SkipTranscoderConfig
        else:  # JumpReLU: relu(pre) where pre > threshold; a threshold above 0 so that both definitions agree
            w["b_enc"] = 0.1 * torch.randn(width, generator=gen)
            w["threshold"] = (cut + w["b_enc"]).clamp_min(1e-3)
            cls, cfg_cls = JumpSkip, JumpSkipConfig
        with torch.random.fork_rng(devices=[]):
            tc = cls(cfg_cls(d_in=d, d_sae=width, d_out=d, apply_b_dec_to_input=False))
        tc.cfg.metadata.hook_name = f"blocks.{layer}.{hook}"
        tc.cfg.metadata.model_name = model.cfg.model_name
        with torch.no_grad():
            for name, t in w.items():
                getattr(tc, name).copy_(t)
        tc.save_model(root / "ours" / f"L{layer}")
        ct = {"W_enc": w["W_enc"].T.contiguous(), "W_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"],
              "W_skip": w["W_skip"]}
        if kind == "jumprelu":
            ct["activation_function.threshold"] = w["threshold"]
        save_file({k: v.float().contiguous() for k, v in ct.items()}, str(root / "ct" / f"layer_{layer}.safetensors"))
        files.append(f"layer_{layer}.safetensors")
    (root / "ct" / "config.yaml").write_text(textwrap.dedent(f"""\
        model_kind: transcoder_set
        scan: "{root.name}"
        feature_input_hook: "{hook}"
        feature_output_hook: "hook_mlp_out"
        transcoders:
        """) + "".join(f'  - "{f}"\n' for f in files))
    return {"ct_format": "transcoder_set", "ours": [f"ours/L{layer}" for layer in range(model.cfg.n_layers)]}


def write_sparsify(model, width: int, k: int, root: Path, seed: int) -> dict:
    """TopK skip transcoders in the layout `train_transcoders` stores (`save_transcoder`): ours/layers.l.mlp."""
    from mcp_interp.methods.features.transcoder_fit import TopKSkipTranscoder, folder_name, save_transcoder

    d = model.cfg.d_model
    gen = torch.Generator().manual_seed(seed)
    folders = []
    for layer in range(model.cfg.n_layers):
        w = random_weights(d, width, gen)
        with torch.random.fork_rng(devices=[]):
            tc = TopKSkipTranscoder(d, width, k)
        with torch.no_grad():
            tc.encoder.weight.copy_(w["W_enc"].T)
            tc.encoder.bias.copy_(0.1 * torch.randn(width, generator=gen))
            tc.W_dec.copy_(w["W_dec"])
            tc.b_dec.copy_(w["b_dec"])
            tc.W_skip.copy_(w["W_skip"])
        folder = f"ours/{folder_name(layer)}"
        save_transcoder(tc, root / folder, layer, model.cfg.model_name)
        folders.append(folder)
    return {"ct_format": "topk", "ours": folders, "sparsify_folders": folders, "ct_input_hook": "mlp.hook_in",
            "ct_output_hook": "mlp.hook_out"}


def cfg_json(cfg) -> dict:
    """A HookedTransformerConfig's plain fields (what JSON holds), on the CPU, without a tokenizer to fetch."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[f.name] = v
    return {**out, "device": "cpu", "tokenizer_name": None}


def smollm2(root: Path, trained: Path, prompt: str, n_tokens: int | None):
    """The bundled SmolLM2-135M with the transcoders of a train_transcoders run (`trained`: a folder holding
    layers.L.mlp folders); circuit-tracer's side gives the other layers transcoders that never fire."""
    from mcp_interp.models import ModelPool

    lm = ModelPool(device="cpu", dtype="float32").get("smollm2-135m")
    found = {int(p.name.split(".")[1]): p for p in sorted(trained.glob("layers.*.mlp"))}
    if not found:
        raise SystemExit(f"--transcoders: {trained} holds no layers.L.mlp folder (a train_transcoders run's folder)")
    folders = [None] * lm.model.cfg.n_layers
    for layer, p in found.items():
        shutil.copytree(p, root / "ours" / p.name)
        folders[layer] = f"ours/{p.name}"
    tokens = torch.tensor([0] + lm.tokenizer.encode(prompt))[:n_tokens]  # 0: "<|endoftext|>", a special token first
    return lm.model, tokens, cfg_json(lm.model.cfg), {"ct_format": "topk", "ours": [f for f in folders if f],
                                                        "sparsify_folders": folders, "ct_input_hook": "mlp.hook_in",
                                                        "ct_output_hook": "mlp.hook_out"}


def write_setup(name: str, root: Path, a):
    """Everything both sides read, under root; returns (our model, prompt tokens, our transcoders)."""
    from safetensors.torch import save_file

    from mcp_interp.methods.features.transcoder import load_transcoder

    model_name, kind, hook = SETUPS[name]
    if model_name == "smollm2":
        if a.transcoders is None:
            raise SystemExit("--transcoders: smollm2-topk needs a train_transcoders run's folder (layers.L.mlp)")
        model, tokens, cfg, tcs = smollm2(root, a.transcoders, a.prompt, a.n_tokens)
    else:
        model, cfg = build_model(model_name, a.seed), MODELS[model_name]
        gen = torch.Generator().manual_seed(a.seed + 1)
        tokens = torch.cat([torch.zeros(1, dtype=torch.long),
                            torch.randint(1, model.cfg.d_vocab, ((a.n_tokens or 12) - 1,), generator=gen)])
        if kind == "topk":
            tcs = write_sparsify(model, a.width, a.k, root, a.seed)
        else:
            tcs = write_sae_lens_and_ct(model, tokens, kind, hook, a.width, root, a.seed)
    if len(tokens) > model.cfg.n_ctx:
        raise SystemExit(f"--n-tokens: {len(tokens)} exceeds the model's context of {model.cfg.n_ctx}")
    # parameters only: buffers (masks, rotary tables) follow from the config, and TransformerLens versions store
    # them differently
    save_file({k: v.detach().float().contiguous().clone() for k, v in model.named_parameters()},
              str(root / "model.safetensors"))
    ct_kwargs = {} if a.batch_size is None else {"batch_size": a.batch_size}
    (root / "setup.json").write_text(json.dumps({"name": name, "cfg": cfg, "tokens": tokens.tolist(),
                                                 "transcoders": tcs, "ct_kwargs": ct_kwargs}, indent=1))
    ours = {}
    for folder in tcs["ours"]:
        tc, layer, reads = load_transcoder(root / folder)
        ours[layer] = (tc, reads)
    return model, tokens, ours


# ------------------------------------------------------------------ circuit-tracer's worker


class Worker:
    """circuit_tracer_side.py in the throwaway venv: one process per setup, one `attribute` per `run()`."""

    def __init__(self, python: Path, root: Path):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of ours on its path
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.log = root / "circuit_tracer_side.log"
        self.proc = subprocess.Popen([str(python), str(SIDE), str(root)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True, env=env)
        self.info = self._answer()

    def _answer(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                obj = json.loads(line)
                if "error" in obj:
                    raise RuntimeError(obj["error"])
                return obj
        tail = self.log.read_text()[-3000:]
        raise RuntimeError(f"circuit-tracer's side exited ({self.proc.wait()}); its stderr ends:\n{tail}")

    def run(self) -> Run:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        a = self._answer()
        self.max_rss_mb = a["max_rss_mb"]
        return Run(a["wall_s"], a["cpu_s"], a["n_nodes"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()


# ------------------------------------------------------------------ node matching and the comparison


def our_keys(g) -> list[tuple]:
    """Node keys in our adjacency's order."""
    T = g.n_tokens
    return ([("feature", *map(int, f)) for f in g.features.tolist()]
            + [("error", layer, p) for layer in g.error_layers for p in range(T)]
            + [("token", p) for p in range(T)] + [("logit", int(t.token)) for t in g.targets])


def ct_keys(ct: dict, n_layers: int) -> list[tuple]:
    """Node keys in circuit-tracer's adjacency's order (Graph docstring: features, errors layer-major, tokens,
    logits)."""
    T = int(ct["input_tokens"].shape[0])
    feats = ct["active_features"][ct["selected_features"]]
    return ([("feature", *map(int, f)) for f in feats.tolist()]
            + [("error", layer, p) for layer in range(n_layers) for p in range(T)]
            + [("token", p) for p in range(T)] + [("logit", int(t)) for t in ct["logit_tokens"].tolist()])


def position(key: tuple) -> int | None:
    return key[2] if key[0] in ("feature", "error") else key[1] if key[0] == "token" else None


def compare(g, ct: dict, n_layers: int, tol: float) -> tuple[bool, list[str]]:
    """Match nodes, compare the common block; (within tolerance, lines to print)."""
    ko, kc = our_keys(g), ct_keys(ct, n_layers)
    A_o, A_c = g.adjacency.double(), ct["adjacency"].double()
    assert A_c.shape == (len(kc), len(kc)), f"circuit-tracer's adjacency {tuple(A_c.shape)} vs {len(kc)} nodes"
    io = {k: i for i, k in enumerate(ko)}
    ic = {k: i for i, k in enumerate(kc)}
    pos0 = {k for k in ko if k[0] in ("feature", "error") and position(k) == 0}
    common = [k for k in ko if k in ic and k not in pos0]
    ours_only = [k for k in ko if k not in ic and k not in pos0]
    ct_only = [k for k in kc if k not in io and not (k[0] == "error" and position(k) == 0)]
    kinds = lambda keys: ", ".join(f"{sum(k[0] == t for k in keys)} {t}s" for t in  # noqa: E731
                                   ("feature", "error", "token", "logit"))
    lines = [f"nodes: ours {len(ko)} ({kinds(ko)}); circuit-tracer {len(kc)} ({kinds(kc)})",
             f"common block: {len(common)} nodes ({kinds(common)})"]
    p0 = [io[k] for k in ko if k in pos0]
    p0_feat = sum(k[0] == "feature" for k in pos0)
    ct_p0_err = [ic[("error", layer, 0)] for layer in range(n_layers)]
    lines.append(f"left out, position 0 (circuit-tracer's BOS): our {p0_feat} feature nodes there (not in its "
                 f"graph) and the {n_layers} error nodes there (its are zero vectors: max |edge| from them "
                 f"{A_c[:, ct_p0_err].abs().max():.2e}); ours send max |edge| {A_o[:, p0].abs().max():.3g}")
    ok = True
    if ours_only or ct_only:
        ok = False
        lines.append(f"UNMATCHED nodes: ours only {len(ours_only)} {ours_only[:5]}, circuit-tracer only "
                     f"{len(ct_only)} {ct_only[:5]}")
    a, c = torch.tensor([io[k] for k in common]), torch.tensor([ic[k] for k in common])
    sub_o, sub_c = A_o[a][:, a], A_c[c][:, c]
    diff = (sub_o - sub_c).abs()
    worst = divmod(int(diff.argmax()), len(common))
    scale = float(sub_o.abs().max())
    ok &= float(diff.max()) <= tol
    lines.append(f"adjacency, common block: max |ours - circuit-tracer| {float(diff.max()):.2e} (max |edge| "
                 f"{scale:.3g}, relative {float(diff.max()) / max(scale, 1e-30):.1e}; worst edge "
                 f"{common[worst[1]]} -> {common[worst[0]]}; {int((sub_o != 0).sum())} non-zero edges) "
                 f"[target <= {tol:g}: {'OK' if float(diff.max()) <= tol else 'MISSED'}]")
    feats = [k for k in common if k[0] == "feature"]
    act_o = g.activations[[io[k] for k in feats]].double()
    ct_acts = ct["activation_values"][ct["selected_features"]].double()
    act_c = ct_acts[[ic[k] for k in feats]]
    logits = [k for k in common if k[0] == "logit"]
    w_o = g.target_weights[[io[k] - g.logit_start for k in logits]].double()
    w_c = ct["logit_probabilities"].double()[[ic[k] - (len(kc) - len(ct["logit_tokens"])) for k in logits]]
    lines.append(f"feature activations: max |diff| {float((act_o - act_c).abs().max()):.2e}; logit targets "
                 f"{[k[1] for k in logits]}, their probabilities max |diff| {float((w_o - w_c).abs().max()):.2e}")
    return ok, lines


# ------------------------------------------------------------------ main


def run_setup(name: str, python: Path, a, tmp: Path) -> bool:
    from safetensors.torch import load_file

    from mcp_interp.methods.features.transcoder import transcoder_width
    from mcp_interp.methods.tracing import attribution_graph

    root = tmp / name
    root.mkdir()
    model, tokens, tcs = write_setup(name, root, a)
    kind, hook = SETUPS[name][1:]
    width = transcoder_width(next(iter(tcs.values()))[0])[1]
    print(f"\n== {name}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
          f"{model.cfg.normalization_type}, {model.cfg.positional_embedding_type} positions; {kind} skip "
          f"transcoders of width {width} reading {hook} at layers {sorted(tcs)}; prompt of {len(tokens)} tokens "
          f"({root})", flush=True)
    try:
        worker = Worker(python, root)
    except RuntimeError as e:
        print(f"circuit-tracer could not build this setup: {e}")
        return False
    try:
        dropped = worker.info["dropped_cfg_fields"]
        print(f"circuit-tracer {worker.info['circuit_tracer']} (torch {worker.info['torch']}, "
              f"{worker.info['threads']} threads) ready; ours: torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads" + (f"; config fields its TransformerLens lacks, left out: "
                                                      f"{dropped}" if dropped else ""), flush=True)
        ours = lambda: attribution_graph(model, tokens, tcs, batch_size=a.batch_size)  # noqa: E731
        t = Timings({"ours": [], "circuit-tracer": []})
        for r in range(a.repeats):
            for side in (("ours", "circuit-tracer") if r % 2 == 0 else ("circuit-tracer", "ours")):
                run = timed(ours) if side == "ours" else worker.run()
                t.runs[side].append(run)
                print(f"  repeat {r + 1}/{a.repeats} {side}: {run.wall:.3f} s wall, {run.cpu:.3f} s CPU", flush=True)
    except RuntimeError as e:
        print(f"circuit-tracer failed: {e}")
        return False
    finally:
        worker.close()
    ct = load_file(str(root / "ct_graph.safetensors"))
    ok, lines = compare(t.first("ours"), ct, model.cfg.n_layers, a.tolerance)
    for line in lines:
        print(line)
    report(t, "ours", diff=None)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS (the whole process so far, model included; ours across the setups run): ours {rss:.0f} MB, "
          f"circuit-tracer {worker.max_rss_mb:.0f} MB")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_repeats(ap, default=3)
    ap.add_argument("--setups", default=DEFAULT_SETUPS, help=f"comma-separated, of {list(SETUPS)}")
    ap.add_argument("--n-tokens", type=int, default=None,
                    help="prompt length, the first token included (default: 12 random tokens on the small models, "
                         "the whole --prompt on SmolLM2)")
    ap.add_argument("--width", type=int, default=128, help="latents per transcoder")
    ap.add_argument("--k", type=int, default=8, help="active latents per position of the TopK transcoders")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="rows per backward pass on both sides (default: each side's own: ours by memory, "
                         "circuit-tracer 512)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--transcoders", type=Path, default=None,
                    help="smollm2-topk: a train_transcoders run's folder (its layers.L.mlp folders)")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help="smollm2-topk: the prompt (after a first token 0)")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max |adjacency difference| accepted")
    ap.add_argument("--venv", type=Path, default=Path(os.environ.get("MCP_INTERP_CT_VENV", DEFAULT_VENV)),
                    help="the throwaway circuit-tracer venv (created when missing)")
    ap.add_argument("--keep", action="store_true", help="keep the setup folders (model, transcoders, graphs)")
    a = ap.parse_args()
    names = [s.strip() for s in a.setups.split(",") if s.strip()]
    bad = [s for s in names if s not in SETUPS]
    if bad:
        ap.error(f"--setups: unknown {bad}; choose from {list(SETUPS)}")
    if a.n_tokens is not None and a.n_tokens < 2:
        ap.error("--n-tokens: at least 2 (the BOS and one token)")
    python = ensure_venv(a.venv)
    print(f"CPU: {device_name('cpu')}")
    tmp = Path(tempfile.mkdtemp(prefix="trace-vs-ct-"))
    results = {}
    try:
        for name in names:
            results[name] = run_setup(name, python, a, tmp)
    finally:
        if a.keep:
            print(f"\nsetup folders kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n" + "; ".join(f"{n}: {'OK' if ok else 'FAILED'}" for n, ok in results.items()))
    sys.exit(0 if all(results.values()) else 1)


if __name__ == "__main__":
    main()
