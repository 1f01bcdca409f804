"""The refinement judge (the offline judge that selected the training data), for reference only."""

from __future__ import annotations

from ptalign_ray.evaluation.judges import register


@register("refinement")
def _factory(seeds="default", **_):
    from ptalign_ray.evaluation.judge import EvaluationJudge

    return EvaluationJudge(seeds)
