"""Attribution of behaviour to components (heads, MLPs, neurons, positions) and edges, and the
faithfulness curves of the circuits the scores imply.

Units are core `Site`s (nodes: `nodes_for`; edge ends: `senders`, `receivers`) and `Edge`s; their
names ("L3H2", "MLP1", "L1N7", "P:IO", "L0H0->L1H0.v") are rendered from them. The entry point is
`run_attribution` (method "dla": `direct_logit_attribution`, what a unit writes straight to the logits);
`node_scores` / `edge_scores` and the circuit evaluators are its building blocks.
"""

from .components import (
                         NODE_LEVELS,
                         Edge,
                         Level,
                         edge_allowed,
                         edge_mask_allowed,
                         has_mlps,
                         node_hooks,
                         node_mask_hooks,
                         node_values,
                         nodes_for,
                         receiver_slot,
                         receiver_unit,
                         receivers,
                         sender_hooks,
                         sender_outputs,
                         senders,
                         split_inputs,
)
from .dla import DirectAttribution, DirectSummary, direct_logit_attribution
from .edges import EDGE_METHODS, MAX_EXACT_EDGES, EdgeScores, edge_scores
from .faithfulness import (
                         FRACTIONS,
                         Curve,
                         area,
                         circuit_counts,
                         edge_circuit_metrics,
                         faithfulness_curves,
                         node_circuit_metrics,
                         top_k_masks,
)
from .masked import masked_forward
from .nodes import NODE_METHODS, SIGNED, NodeScores, PairChunk, final_metric, node_scores, pair_chunks
from .report import CIRCUIT_TARGET, AttributionReport, GraphEdge, GraphNode, RankedUnit, compare, run_attribution

__all__ = ["AttributionReport", "CIRCUIT_TARGET", "Curve", "DirectAttribution", "DirectSummary", "EDGE_METHODS",
           "Edge", "EdgeScores", "FRACTIONS",
           "GraphEdge", "GraphNode", "Level", "MAX_EXACT_EDGES", "NODE_LEVELS", "NODE_METHODS", "NodeScores",
           "PairChunk", "RankedUnit", "SIGNED", "area", "circuit_counts", "compare", "direct_logit_attribution",
           "edge_allowed",
           "edge_circuit_metrics",
           "edge_mask_allowed", "edge_scores", "faithfulness_curves", "final_metric", "has_mlps", "masked_forward",
           "node_circuit_metrics", "node_hooks", "node_mask_hooks", "node_scores", "node_values", "nodes_for",
           "pair_chunks", "receiver_slot", "receiver_unit", "receivers", "run_attribution", "sender_hooks",
           "sender_outputs", "senders", "split_inputs", "top_k_masks"]
