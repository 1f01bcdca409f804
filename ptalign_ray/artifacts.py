"""What the stages hand each other: stage folder names, model variants, column schemas, loaders.

One place for the run directory's data contract, so a stage reads another stage's output without
importing that stage (training and evaluation never import synthesis/), and a model variant's folder,
label and API name are written once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from ptalign_ray.runs import RunDir

# -- stages ------------------------------------------------------------------------------------
SYNTHESIS, REFINEMENT, EVALUATION = "synthesis", "refinement", "evaluation"
BENIGN_DIR = "benign"  # next to a stage's data/, so readers of data/ see the triplets only

# -- rows --------------------------------------------------------------------------------------
# question kinds: red-team (harmful), benign (edgy: near a harm topic), everyday (broad subjects)
RED_TEAM, BENIGN, EVERYDAY = "red_team", "benign", "everyday"
OWN = "own"  # polarity of the model's own answer to a bare red-team question
REFUSAL = "refusal"  # polarity of a refusal-primed answer to a benign question

TRIPLET_COLUMNS = [
    "id", "domain", "topic", "question", "positive", "toxic", "own", "harm_prob",
    "positive_tokens", "toxic_tokens", "positive_truncated", "toxic_truncated", "model", "config_hash",
]  # fmt: skip
# refusal: a refusal-primed answer to the benign question (synthesis.benign_refusals), else empty
BENIGN_COLUMNS = [
    "id", "kind", "domain", "topic", "question", "response", "refusal", "response_tokens", "response_truncated",
    "model", "config_hash",
]  # fmt: skip


def question_id(question: str) -> str:
    return hashlib.sha1(question.strip().lower().encode()).hexdigest()[:16]


def load_triplets(run: RunDir, stage: str = SYNTHESIS) -> pd.DataFrame:
    """A finished stage's (question, positive, toxic) rows."""
    return pd.read_parquet(run.data_dir(stage))


def load_benign(run: RunDir, stage: str = SYNTHESIS) -> pd.DataFrame:
    """A finished stage's benign questions and answers (empty when it has none)."""
    path = run.data_dir(stage).parent / BENIGN_DIR / "benign.parquet"
    if not path.is_file():
        return pd.DataFrame(columns=["id", "kind", "domain", "topic", "question", "response"])
    df = pd.read_parquet(path)
    return df if "kind" in df else df.assign(kind=BENIGN)


def stage_digest(run: RunDir, stage: str) -> str:
    """Identity of one publication of a finished stage: a digest of its manifest (which records
    counts and timings, so every re-run publishes a new identity). Downstream stages put it in their
    config hash, so a re-synthesised dataset makes refinement, training and evaluation run again
    instead of looking finished on stale data."""
    path = run.stage_dir(stage) / "manifest.json"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def upstream_key(run: RunDir, stage: str) -> str:
    """What a downstream stage hashes of a finished upstream stage: its config hash and publication."""
    return f"{run.manifest(stage).get('config_hash', '')}:{stage_digest(run, stage)}"


# -- models ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A trained model: its training stage folder, report label, public API name, what it changes in
    the training section, and the ``training.<switch>`` that has the main job train it (None: always)."""

    name: str
    stage: str
    label: str
    api_name: str
    training: dict = field(default_factory=dict, hash=False)
    switch: Optional[str] = None


VARIANTS = {
    "ptalign": Variant("ptalign", "training", "PT-ALIGN", "ptalign"),
    "mle_only": Variant("mle_only", "training_mle_only", "MLE-only", "mle-only",
                        {"objective": "dual", "alpha": 0.0}, switch="ablation_mle_only"),
    "dpo": Variant("dpo", "training_dpo", "DPO", "dpo", {"objective": "dpo"}, switch="ablation_dpo"),
}  # fmt: skip
MODEL_LABELS = {"base": "base", **{v.name: v.label for v in VARIANTS.values()}}


def training_stage(variant: str) -> str:
    """The run-directory folder of a training variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown training variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[variant].stage


def trained_variants(training) -> list[str]:
    """The variants the main job trains: ``ptalign`` and those whose ``training.<switch>`` is on."""
    return [v.name for v in VARIANTS.values() if v.switch is None or getattr(training, v.switch)]
