"""The pruned graph as circuit-tracer / Neuronpedia graph JSON (circuit-tracer's `create_graph_files`, schema 1), so
their viewers open it.

Shape (circuit_tracer/frontend/graph_models.py): {"metadata": {slug, scan, transcoder_list, prompt_tokens, prompt,
node_threshold, schema_version, info, generation_settings, pruning_settings}, "qParams": {pinnedIds, supernodes,
linkType, clickedId, sg_pos}, "nodes": [...], "links": [{source, target, weight}]}. Node ids as circuit-tracer writes
them:
  feature  "{layer}_{latent}_{pos}", feature = cantor(layer, latent), feature_type "cross layer transcoder"
           (the one name its viewer gives transcoder features), jsNodeId "{layer}_{latent}-0", activation;
  error    "{layer}_-1_{pos}", feature -1, feature_type "mlp reconstruction error", jsNodeId "{layer}_-1-{pos}";
  token    "E_{token id}_{pos}", layer "E", feature = pos, feature_type "embedding", jsNodeId "E_{id}-{pos}";
  logit    "{n_layers + 1}_{token id}_{last pos}", feature_type "logit", token_prob, is_target_logit (the first
           target), jsNodeId "L_{id}-{pos}", clerp 'Output "x" (p=0.123)'. A logit-difference target has no token id
           of its own: it takes d_vocab + its index, as circuit-tracer numbers targets that are not one token.
influence: the node's cumulative influence share (`Pruned.cumulative`; circuit-tracer's cumulative_scores), none
for logits. Nodes: the kept ones with a kept edge, and every token and logit; links: the kept edges between them.
"""

from __future__ import annotations

import time

import torch

from .graph import AttributionGraph
from .pruning import Pruned

SCHEMA_VERSION = 1
FEATURE_TYPES = ("cross layer transcoder", "mlp reconstruction error", "embedding", "logit")


def cantor(x: int, y: int) -> int:
    """circuit-tracer's feature number of (layer, latent)."""
    return (x + y) * (x + y + 1) // 2 + y


def node_ids(graph: AttributionGraph, d_vocab: int) -> list[str]:
    """Every node's circuit-tracer node_id, in graph (adjacency) order."""
    ids = []
    for i in range(graph.n_nodes):
        kind = graph.kind(i)
        if kind == "feature":
            l, p, f = (int(v) for v in graph.features[i])
            ids.append(f"{l}_{f}_{p}")
        elif kind == "error":
            j = i - graph.error_start
            ids.append(f"{graph.error_layers[j // graph.n_tokens]}_-1_{j % graph.n_tokens}")
        elif kind == "token":
            p = i - graph.token_start
            ids.append(f"E_{int(graph.tokens[p])}_{p}")
        else:
            k = i - graph.logit_start
            ids.append(f"{graph.n_layers + 1}_{logit_vocab_index(graph, k, d_vocab)}_{graph.n_tokens - 1}")
    return ids


def logit_vocab_index(graph: AttributionGraph, k: int, d_vocab: int) -> int:
    """The vocabulary index circuit-tracer gives target k: its token, or d_vocab + k for a logit difference."""
    t = graph.targets[k]
    return t.token if t.counterfactual is None else d_vocab + k


@torch.no_grad()
def target_probs(model, tokens, graph: AttributionGraph) -> list[float]:
    """Each target's probability in the real model at the last position (a logit difference: its answer's)."""
    logits = model(torch.as_tensor(tokens).reshape(1, -1).to(model.cfg.device))[0, -1].float()
    probs = torch.softmax(logits, -1).cpu()
    return [float(probs[t.token]) for t in graph.targets]


def graph_json(graph: AttributionGraph, pruned: Pruned, *, slug: str, scan: str, prompt: str, d_vocab: int,
               probs: list[float], token_strings: list[str] | None = None, target_strings: list[str] | None = None,
               clerps: dict[int, str] | None = None, transcoder_list: list[str] | None = None,
               generation_settings: dict | None = None, edge_threshold: float | None = None,
               node_threshold: float | None = None, creator: str = "mcp-interp trace") -> dict:
    """The graph JSON (module docstring). token_strings: each prompt token as text (default graph.token_labels);
    target_strings: each target in words for its clerp; clerps: node index -> a label for feature nodes."""
    T = graph.n_tokens
    toks = token_strings or list(graph.token_labels)
    tstr = target_strings or list(graph.target_labels)
    cum = pruned.cumulative
    nodes: dict[int, dict] = {}
    for i in pruned.node_mask.nonzero().flatten().tolist():
        kind = graph.kind(i)
        infl = float(cum[i])
        if kind == "feature":
            l, p, f = (int(v) for v in graph.features[i])
            nodes[i] = _node(f"{l}_{f}_{p}", cantor(l, f), str(l), p, FEATURE_TYPES[0], f"{l}_{f}-0",
                             influence=infl, activation=float(graph.activations[i]),
                             clerp=(clerps or {}).get(i, ""))
        elif kind == "error":
            j = i - graph.error_start
            l, p = graph.error_layers[j // T], j % T
            nodes[i] = _node(f"{l}_-1_{p}", -1, str(l), p, FEATURE_TYPES[1], f"{l}_-1-{p}", influence=infl)
        elif kind == "token":
            p = i - graph.token_start
            tok = int(graph.tokens[p])
            nodes[i] = _node(f"E_{tok}_{p}", p, "E", p, FEATURE_TYPES[2], f"E_{tok}-{p}", influence=infl)
        else:
            k = i - graph.logit_start
            v = logit_vocab_index(graph, k, d_vocab)
            layer = str(graph.n_layers + 1)
            nodes[i] = _node(f"{layer}_{v}_{T - 1}", v, layer, T - 1, FEATURE_TYPES[3], f"L_{v}-{T - 1}",
                             token_prob=float(probs[k]), is_target_logit=k == 0,
                             clerp=f"Output {tstr[k]} (p={probs[k]:.3f})")
    dst, src = pruned.edge_mask.nonzero(as_tuple=True)
    weights = graph.adjacency[dst, src].tolist()
    links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(w)}
             for s, t, w in zip(src.tolist(), dst.tolist(), weights) if s in nodes and t in nodes]
    used = {x for e in links for x in (e["source"], e["target"])}
    kept = [n for n in nodes.values() if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")]
    meta = {"slug": slug, "scan": scan, "transcoder_list": list(transcoder_list or []), "prompt_tokens": toks,
            "prompt": prompt, "node_threshold": node_threshold,
            "schema_version": SCHEMA_VERSION,
            "info": {"creator_name": creator, "generator": {"name": "mcp-interp", "url": ""},
                     "create_time_ms": int(time.time() * 1000)},
            "generation_settings": dict(generation_settings or {}),
            "pruning_settings": {"node_threshold": node_threshold, "edge_threshold": edge_threshold}}
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": meta, "qParams": qparams, "nodes": kept, "links": links}


def _node(node_id: str, feature: int, layer: str, ctx: int, ftype: str, js: str, *, influence: float | None = None,
          activation: float | None = None, token_prob: float = 0.0, is_target_logit: bool = False,
          clerp: str = "") -> dict:
    return {"node_id": node_id, "feature": int(feature), "layer": layer, "ctx_idx": int(ctx), "feature_type": ftype,
            "token_prob": token_prob, "is_target_logit": is_target_logit, "run_idx": 0, "reverse_ctx_idx": 0,
            "jsNodeId": js, "clerp": clerp, "influence": influence, "activation": activation}


def kept_features(graph: AttributionGraph, pruned: Pruned) -> list[int]:
    """The feature nodes the pruning kept, the most influential first."""
    kept = pruned.node_mask[:graph.n_features].nonzero().flatten()
    return kept[torch.argsort(pruned.influence[kept], descending=True, stable=True)].tolist()


def graph_metadata(graph_json_dict: dict) -> dict:
    """graph-metadata.json, the index circuit-tracer's local server lists a folder's graphs from."""
    return {"graphs": [graph_json_dict["metadata"]]}


__all__ = ["FEATURE_TYPES", "SCHEMA_VERSION", "cantor", "graph_json", "graph_metadata", "kept_features",
           "logit_vocab_index", "node_ids", "target_probs"]
