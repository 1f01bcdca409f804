"""Training objectives behind one protocol: log-probs + masks + global counts in, (loss, metrics) out.

Shaped after NeMo-RL's loss interface. The trainer owns the model, the data and the distribution;
an objective only sees one micro-batch of per-token log-probs (:class:`Batch`) and the step's global
counts (:class:`Counts`, all-reduced over every Ray Train worker), and returns

- ``loss``: this shard's *contribution* (normalised by the global counts), carrying the gradient;
- ``metrics``: detached contributions of the same kind, one per name in ``objective.metrics``
  (always including ``"loss"``). Summed over micro-batches and workers they give the step's value.

The trainer, its reporting window, the stage manifest and the report read the metric names and
labels from the objective, so a new objective brings its own metrics with it.

Each sequence pair of a row is (chosen, rejected): the positive (harmless) answer and the toxic
answer of a red-team triplet, or a helpful answer and its refusal-primed counterpart.

Adding an objective: write a class with the attributes of :class:`Objective` and a ``__call__`` in
this module and register it in :data:`OBJECTIVES`. A new hyperparameter is a field of
``TrainingConfig`` (``ptalign_ray/config.py``) read in ``from_config``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, Optional, Protocol

import torch

from ptalign_ray.training.loss import Count, as_count, check_count, dual_loss


@dataclass
class Batch:
    """One micro-batch: per-token log-probs [B, T-1] with masks aligned to them (``shift_mask``).

    ``ref_chosen`` / ``ref_rejected`` [B]: summed log-probs of the masked tokens under the reference
    model, filled in by the trainer for objectives with ``uses_reference`` (else None).
    """

    chosen_logp: torch.Tensor
    chosen_mask: torch.Tensor
    rejected_logp: torch.Tensor
    rejected_mask: torch.Tensor
    ref_chosen: Optional[torch.Tensor] = None
    ref_rejected: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class Counts:
    """What one optimizer step trains on, summed over every worker's rows (all-reduced).

    ``rejected_tokens`` is 0 when the rejected side is neither trained nor measured in that step.
    ``pairs``: rows with supervised tokens on both sides (empty dummy rows and MLE-only rows are not).
    """

    chosen_tokens: float = 0.0
    rejected_tokens: float = 0.0
    pairs: float = 0.0


class Objective(Protocol):
    """What the trainer, the data preparation and the reports need to know about an objective."""

    name: ClassVar[str]
    # metric name -> label for logs and plots, "loss" first; the keys of every call's metrics
    metrics: ClassVar[dict[str, str]]
    # metric name -> Counts field that weights it when steps are averaged (a step where that count is
    # 0 adds nothing); metrics not listed are averaged over steps
    weights: ClassVar[dict[str, str]]
    # what the data's rejected mask covers: "ut" = the unlikelihood mask (training.mask_mode),
    # "response" = every response token of the rejected answer (and its end-of-turn), like the chosen side
    rejected_mask: ClassVar[Literal["ut", "response"]]
    pairs_only: ClassVar[bool]  # rows without a rejected answer are dropped from the data (and counted)
    uses_reference: ClassVar[bool]  # needs Batch.ref_*: the policy with its LoRA adapter switched off
    config_fields: ClassVar[tuple[str, ...]]  # TrainingConfig fields it reads (they key the stage's hash)
    trains_rejected: bool  # the rejected side is in the gradient (else only measured, when asked)
    params: dict  # its hyperparameters, recorded in the stage manifest

    def __call__(self, batch: Batch, counts: Counts) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def sequence_logps(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-prob of the masked tokens of each row: [B, T-1] -> [B] (float32)."""
    logp = logp.float()
    return torch.where(mask.bool(), logp, torch.zeros_like(logp)).sum(-1)


class Dual:
    """PT-ALIGN: L = L_MLE(chosen) + alpha * L_UT(rejected) (:func:`~ptalign_ray.training.loss.dual_loss`).

    ``alpha == 0`` is the MLE-only ablation: the rejected side is then only measured (under no_grad)
    in the steps that report.
    """

    name = "dual"
    metrics = {"loss": "loss (L_MLE + alpha L_UT)", "mle": "L_MLE (positive)", "ut": "L_UT (toxic)",
               "toxic_prob": "mean toxic-token probability"}  # fmt: skip
    weights = {"ut": "rejected_tokens", "toxic_prob": "rejected_tokens"}
    rejected_mask = "ut"
    pairs_only = False
    uses_reference = False
    config_fields = ("alpha", "mask_mode", "ut_skip_openings", "ut_exempt_common")

    def __init__(self, alpha: float = 1.0, min_prob: float = 1e-5):
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha, self.min_prob = float(alpha), min_prob
        self.trains_rejected = self.alpha > 0
        self.params = {"alpha": self.alpha}

    @classmethod
    def from_config(cls, tcfg) -> "Dual":
        return cls(tcfg.alpha)

    def __call__(self, batch: Batch, counts: Counts) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = dual_loss(batch.chosen_logp, batch.chosen_mask, batch.rejected_logp, batch.rejected_mask, self.alpha,
                        counts.chosen_tokens, counts.rejected_tokens, self.min_prob)  # fmt: skip
        return out.loss, {"loss": out.loss.detach(), "mle": out.mle, "ut": out.ut, "toxic_prob": out.toxic_prob_mean}


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    pairs_global: Count,
    valid: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sigmoid DPO (Rafailov et al. 2023; TRL ``loss_type="sigmoid"`` without label smoothing) for one shard.

    Inputs are summed response log-probs per pair [B] under the policy and the reference.
    logits = (chosen - ref_chosen) - (rejected - ref_rejected); loss = -logsigmoid(beta * logits),
    summed over the ``valid`` pairs of this shard and divided by ``pairs_global`` (the pairs of the
    whole step across workers), so the contributions of every shard add up to the mean over all pairs.
    Rewards are TRL's: beta * (policy - reference) log-prob, detached.
    """
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    valid = torch.ones_like(chosen, dtype=torch.bool) if valid is None else valid.bool()
    denom = check_count(int(valid.sum().item()), as_count(pairs_global, "pairs_global"), "pairs")
    chosen_logratio = chosen.float() - ref_chosen.float()
    rejected_logratio = rejected.float() - ref_rejected.float()
    losses = -torch.nn.functional.logsigmoid(beta * (chosen_logratio - rejected_logratio))
    zero = torch.zeros_like(losses)
    loss = torch.where(valid, losses, zero).sum() / denom

    def mean(x: torch.Tensor) -> torch.Tensor:
        return torch.where(valid, x, zero).sum() / denom

    with torch.no_grad():
        chosen_reward = beta * chosen_logratio.detach()
        rejected_reward = beta * rejected_logratio.detach()
        metrics = {
            "loss": loss.detach(),
            "reward_accuracy": mean((chosen_reward > rejected_reward).float()),
            "reward_margin": mean(chosen_reward - rejected_reward),
            "chosen_reward": mean(chosen_reward),
            "rejected_reward": mean(rejected_reward),
        }
    return loss, metrics


class Dpo:
    """Direct preference optimisation: chosen = the positive answer, rejected = the toxic one.

    The reference model is the policy's base weights (LoRA adapter off), so no second model is held.
    Rows without a rejected answer cannot be pairs and are dropped when the data is prepared. Also
    reports L_MLE of the chosen side (not trained), comparable with PT-ALIGN's.
    """

    name = "dpo"
    metrics = {"loss": "loss (DPO)", "reward_accuracy": "reward accuracy (chosen > rejected)",
               "reward_margin": "reward margin (chosen - rejected)", "chosen_reward": "chosen reward",
               "rejected_reward": "rejected reward", "mle": "L_MLE (positive)"}  # fmt: skip
    weights = {k: "pairs" for k in metrics if k != "mle"}
    rejected_mask = "response"
    pairs_only = True
    uses_reference = True
    trains_rejected = True
    config_fields = ("dpo_beta",)

    def __init__(self, beta: float = 0.1):
        if not math.isfinite(beta) or beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = float(beta)
        self.params = {"beta": self.beta}

    @classmethod
    def from_config(cls, tcfg) -> "Dpo":
        return cls(tcfg.dpo_beta)

    def __call__(self, batch: Batch, counts: Counts) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if batch.ref_chosen is None or batch.ref_rejected is None:
            raise ValueError("the DPO objective needs the reference log-probs (Batch.ref_chosen / ref_rejected)")
        valid = batch.chosen_mask.any(-1) & batch.rejected_mask.any(-1)
        chosen = sequence_logps(batch.chosen_logp, batch.chosen_mask)
        rejected = sequence_logps(batch.rejected_logp, batch.rejected_mask)
        loss, metrics = dpo_loss(chosen, rejected, batch.ref_chosen, batch.ref_rejected, self.beta, counts.pairs, valid)
        with torch.no_grad():
            metrics["mle"] = -chosen.detach().sum() / max(counts.chosen_tokens, 1.0)
        return loss, metrics


OBJECTIVES: dict[str, type] = {"dual": Dual, "dpo": Dpo}


def build_objective(tcfg) -> Objective:
    """The objective ``training.objective`` names, with its hyperparameters from the training config."""
    if tcfg.objective not in OBJECTIVES:
        raise ValueError(f"unknown training objective {tcfg.objective!r}; registered: {sorted(OBJECTIVES)}")
    return OBJECTIVES[tcfg.objective].from_config(tcfg)
