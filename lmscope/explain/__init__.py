"""Automatic interpretation: label every feature of an atlas and score each label honestly.

    from lmscope.explain import ExplainConfig, explain_atlas, score_report
    explain_atlas(ExplainConfig(atlas="atlas/"))          # stats explainer + direct/embedding
    scorers + baselines
    print(score_report("atlas/").text)

Explainers see only part of a feature's stored examples (`split.py`); scorers judge the label on the
held-out rest, balanced with non-activating text, next to two baselines (`baselines.py`).
"""

from .report import ScoreReport, score_report
from .runner import ExplainConfig, ExplainResult, explain_atlas

__all__ = ["ExplainConfig", "ExplainResult", "explain_atlas", "ScoreReport", "score_report"]
