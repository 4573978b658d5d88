"""Intervene on features and directions during generation: clamp, add, scale, ablate, steering
vectors.

ivs = parse_interventions(["blocks.6.resid_post/123=+8"], dictionaries)
edits = feature_edits(ivs, dictionaries)                 # error term kept
vec = steering_vector(lm, "Love", "Hate", layer=6)       # ActAdd
out = compare(lm, "I think dogs are", edits, max_new_tokens=30)
out = steer(lm, dictionaries, "I think dogs are", features=["blocks.6.resid_post/123=+8"],
            vector=VectorSpec("Love", "Hate", layer=6))   # all of the above: the CLI's and
            viewer's path
"""

from .generate import Comparison, compare, generate
from .interventions import FeatureIntervention, feature_edits, parse_interventions
from .plan import SteerPlan, VectorSpec, plan, steer
from .vectors import SteeringVector, steering_vector, vector_edits

__all__ = [
    "Comparison",
    "FeatureIntervention",
    "SteerPlan",
    "SteeringVector",
    "VectorSpec",
    "compare",
    "feature_edits",
    "generate",
    "parse_interventions",
    "plan",
    "steer",
    "steering_vector",
    "vector_edits",
]
