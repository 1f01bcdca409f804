"""The pipeline: every stage, in the order `ptalign run` runs them.

The one list of stages. cli.py builds one sub-command per stage command from it (stages that share
a command, like the training variants, run together), and `ptalign run` walks it with one context.
To add a stage: write its module (a `Stage`, see ptalign_ray/stages.py) and add it here.
"""

from __future__ import annotations

from ptalign_ray.evaluation.stage import EVALUATE
from ptalign_ray.refinement.stage import REFINE
from ptalign_ray.stages import Stage
from ptalign_ray.synthesis.stage import SYNTHESIZE
from ptalign_ray.training.stage import TRAIN

STAGES: tuple[Stage, ...] = (SYNTHESIZE, REFINE, *TRAIN, EVALUATE)


def commands() -> dict[str, list[Stage]]:
    """Stage command -> its stages, both in pipeline order."""
    out: dict[str, list[Stage]] = {}
    for stage in STAGES:
        out.setdefault(stage.command, []).append(stage)
    return out
