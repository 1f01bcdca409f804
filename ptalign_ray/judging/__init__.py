"""Safety judging: verdicts on (prompt, response) pairs for refinement, serving and evaluation.

Importing this package is cheap; the ``offline`` backend (and torch / transformers) loads on first
use of :class:`OfflineJudge`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ptalign_ray.judging.refusal import RefusalMatch, detect_refusal, is_refusal
from ptalign_ray.judging.verdict import Verdict

if TYPE_CHECKING:
    from ptalign_ray.judging.offline import OfflineJudge

__all__ = ["OfflineJudge", "RefusalMatch", "Verdict", "detect_refusal", "is_refusal"]


def __getattr__(name: str):
    if name == "OfflineJudge":
        from ptalign_ray.judging.offline import OfflineJudge

        return OfflineJudge
    raise AttributeError(name)
