"""Link outputs to features: attribution, attribution graphs through transcoders, verification.

res = trace(lm, dictionaries, "The capital of France is", target=" Paris")   # DLA + grad x act
verify(lm, dictionaries, res)                       # ablate the top features, actual vs predicted
g = build_graph(lm, transcoders, prompt)            # replacement model + batched backward passes
pruned = prune(g); scores = graph_scores(g, pruned) # influence pruning, replacement/completeness
graph_json(g, pruned)                               # circuit-tracer / Neuronpedia graph JSON
"""

from .attribution import FeatureAttribution, TraceResult, resolve_feature_id, resolve_target, trace
from .graph import Graph, build_graph
from .graph_json import graph_json
from .memory import MemoryEstimate, estimate_memory
from .prune import GraphScores, PruneResult, graph_scores, prune
from .replacement import check_transcoders, replacement
from .verify import verify

__all__ = [
    "FeatureAttribution",
    "Graph",
    "GraphScores",
    "MemoryEstimate",
    "PruneResult",
    "TraceResult",
    "build_graph",
    "check_transcoders",
    "estimate_memory",
    "graph_json",
    "graph_scores",
    "resolve_feature_id",
    "prune",
    "replacement",
    "resolve_target",
    "trace",
    "verify",
]
