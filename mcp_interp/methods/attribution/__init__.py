"""Attribution of behaviour to components (heads, MLPs, neurons, positions) and edges, and the
faithfulness curves of the circuits the scores imply."""

from .components import Node, Receiver, Sender, nodes_for, receivers, senders
from .edges import EDGE_METHODS, EdgeScores, edge_scores
from .faithfulness import FRACTIONS, Curve, area, edge_circuit_metrics, faithfulness_curves, node_circuit_metrics
from .nodes import NODE_METHODS, SIGNED, NodeScores, node_scores
from .report import AttributionReport, compare, run_attribution

__all__ = ["AttributionReport", "Curve", "EDGE_METHODS", "EdgeScores", "FRACTIONS", "NODE_METHODS", "Node", "NodeScores",
           "Receiver", "SIGNED", "Sender", "area", "compare", "edge_circuit_metrics", "edge_scores", "faithfulness_curves",
           "node_circuit_metrics", "node_scores", "nodes_for", "receivers", "run_attribution", "senders"]
