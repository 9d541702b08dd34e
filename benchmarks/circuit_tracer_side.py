"""circuit-tracer's side of benchmarks/trace_vs_circuit_tracer.py: runs in the throwaway venv that script builds
(circuit-tracer 0.5.0 pins transformers <= 4.57.3, so it cannot share ours), never in ours; imports nothing of ours.

    <venv>/bin/python benchmarks/circuit_tracer_side.py SETUP_DIR

SETUP_DIR (written by the benchmark): setup.json (the HookedTransformerConfig keyword arguments, the prompt's token
ids, the vocabulary size, how the transcoders are stored), model.safetensors (the model's parameters), and the
transcoders in a form circuit-tracer reads: `ct/config.yaml` (`model_kind: transcoder_set`, read by circuit-tracer's
own `load_transcoders`) or, for TopK transcoders, which circuit-tracer has no loader for, sparsify folders from which
`SingleLayerTranscoder`s are built here as the README says.

The model is circuit-tracer's `ReplacementModel.from_config` (TransformerLens backend) with the same weights; its
tokenizer is a word-level one over the vocabulary with "<bos>" as token 0 (circuit-tracer wants a special token
first). Nothing is downloaded (HF_HUB_OFFLINE). Protocol on stdin/stdout, one JSON object a line: prints
{"ready": ...} once the model is built; each line "run" gets one `attribute(tokens, model)` (no pruning, every active
feature, circuit-tracer's defaults otherwise), timed in this process, answered {"wall_s", "cpu_s"}; the first run's
graph is written to SETUP_DIR/ct_graph.safetensors (its peak RSS so far comes with each answer); "quit" ends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


def say(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def tokenizer(d_vocab: int):
    """A word-level HF tokenizer over ids 0..d_vocab-1: "<bos>" (special) then "t1", "t2", ..."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, **{f"t{i}": i for i in range(1, d_vocab)}}
    tok = Tokenizer(WordLevel(vocab, unk_token="<bos>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<bos>")


def transcoders(setup: dict, root: Path):
    """circuit-tracer's TranscoderSet, read by its own loader where it has one."""
    from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet

    tc = setup["transcoders"]
    if tc["ct_format"] == "transcoder_set":
        from circuit_tracer.utils.hf_utils import load_transcoders

        config = yaml.safe_load((root / "ct" / "config.yaml").read_text())
        config["transcoders"] = [str(root / "ct" / p) for p in config["transcoders"]]
        return load_transcoders(config, device=torch.device("cpu"), dtype=torch.float32, lazy_encoder=False,
                                lazy_decoder=False)
    # TopK (sparsify folders): circuit-tracer's TopK keeps the k largest pre-activations, sparsify's relu(pre) first.
    # A layer without a folder gets a transcoder that never fires and has no skip (its whole MLP output is the
    # error node), which is what ours does with a layer that has no transcoder; circuit-tracer needs every layer.
    from circuit_tracer.transcoder.activation_functions import TopK

    folders = tc["sparsify_folders"]
    first = json.loads((root / next(f for f in folders if f) / "cfg.json").read_text())
    d, width = int(first["d_in"]), int(first["num_latents"])
    layers = {}
    for layer, folder in enumerate(folders):
        if folder:
            cfg = json.loads((root / folder / "cfg.json").read_text())
            w = load_file(str(root / folder / "sae.safetensors"))
            act = torch.nn.Sequential(torch.nn.ReLU(), TopK(int(cfg["k"])))
            w = {"W_enc": w["encoder.weight"], "b_enc": w["encoder.bias"], "W_dec": w["W_dec"], "b_dec": w["b_dec"],
                 "W_skip": w["W_skip"]}
        else:
            act = torch.nn.ReLU()
            w = {"W_enc": torch.zeros(width, d), "b_enc": -torch.ones(width), "W_dec": torch.zeros(width, d),
                 "b_dec": torch.zeros(d), "W_skip": torch.zeros(d, d)}
        t = SingleLayerTranscoder(d, width, act, layer, skip_connection=True, device=torch.device("cpu"),
                                  dtype=torch.float32)
        t.load_state_dict(w)
        layers[layer] = t
    return TranscoderSet(layers, feature_input_hook=tc["ct_input_hook"], feature_output_hook=tc["ct_output_hook"],
                         scan=setup["name"])


def build(root: Path):
    from circuit_tracer import ReplacementModel
    from transformer_lens import HookedTransformerConfig

    setup = json.loads((root / "setup.json").read_text())
    known = {f.name for f in dataclasses.fields(HookedTransformerConfig)}  # this TransformerLens' fields
    cfg = HookedTransformerConfig(**{k: v for k, v in setup["cfg"].items() if k in known})
    setup["dropped_cfg_fields"] = sorted(set(setup["cfg"]) - known)
    model = ReplacementModel.from_config(cfg, transcoders(setup, root), backend="transformerlens")
    # the replacement model wraps each MLP and the unembedding in a module of its own: rename the keys to match
    sd = {k.replace(".mlp.", ".mlp.old_mlp.").replace("unembed.", "unembed.old_unembed."): v
          for k, v in load_file(str(root / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    params = {n for n, _ in model.named_parameters()}  # buffers (masks, rotary tables) follow from the config
    if unexpected or [k for k in missing if k in params and not k.startswith("transcoders.")]:
        raise SystemExit(f"circuit-tracer side: the state dict does not fit its model (missing {missing}, "
                         f"unexpected {unexpected})")
    model.tokenizer = tokenizer(cfg.d_vocab)
    model.eval()
    return model, torch.tensor(setup["tokens"]), setup


def main() -> None:
    root = Path(sys.argv[1])
    torch.set_grad_enabled(True)
    from circuit_tracer import __version__, attribute

    model, tokens, setup = build(root)
    say({"ready": True, "circuit_tracer": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
         "dropped_cfg_fields": setup["dropped_cfg_fields"]})
    n = 0
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "run":
            say({"error": f"unknown command {cmd!r}"})
            continue
        c0, w0 = time.process_time(), time.perf_counter()
        g = attribute(tokens, model, **setup.get("ct_kwargs", {}))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if n == 0:
            save_file({"adjacency": g.adjacency_matrix.float().contiguous(),
                       "active_features": g.active_features.long().contiguous(),
                       "selected_features": g.selected_features.long().contiguous(),
                       "activation_values": g.activation_values.float().contiguous(),
                       "logit_tokens": g.logit_token_ids.long().contiguous(),
                       "logit_probabilities": g.logit_probabilities.float().contiguous(),
                       "input_tokens": g.input_tokens.long().contiguous()}, str(root / "ct_graph.safetensors"))
        n += 1
        say({"wall_s": wall, "cpu_s": cpu, "n_nodes": int(g.adjacency_matrix.shape[0]),
             "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


if __name__ == "__main__":
    main()
