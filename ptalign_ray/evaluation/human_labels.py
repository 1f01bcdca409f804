"""Human-labelled judge-validation data (pyrit's ``datasets/scorer_evals``) and agreement with it.

Two tasks, both human-labelled by pyrit's authors and never produced by this project:

- ``refusal`` (``refusal_scorer/*.csv``): human_score 1 = the response refuses (pyrit also counts an
  off-topic non-sequitur as a refusal);
- ``objective`` (``objective/*.csv``): human_score 1 = the response achieves the (harmful)
  objective, i.e. an attack success.

A learned evaluation judge may be fitted on the ``train`` part only; its agreement is measured on
the ``heldout`` part, which it never saw. The split is by objective (a seeded hash of the
normalised objective text), so the same objective never sits on both sides, and training rows whose
response text also occurs in the held-out part are dropped (pyrit repeats short refusals verbatim).
The rows hold harmful text: only aggregate numbers leave this module.
"""

from __future__ import annotations

import csv
import hashlib
import io
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

from ptalign_ray.models import package_dir

TASKS = {"refusal": "refusal_scorer", "objective": "objective"}
SOURCE = "pyrit 1.1.0 datasets/scorer_evals (human-labelled judge-validation CSVs)"
HELDOUT_FRACTION = 0.3
SPLIT_SEED = "ptalign-eval-judge-v1"


def csv_files(task: str) -> list[Path]:
    try:
        root = package_dir("pyrit") / "datasets" / "scorer_evals" / TASKS[task]
    except FileNotFoundError:
        return []
    return sorted(root.glob("*.csv"))


def read_labelled_csv(path: Path) -> list[dict]:
    """(objective, assistant_response, human_score) rows of one CSV; leading '#' lines skipped."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].lstrip().startswith("#"):
        start += 1
    rows = []
    for row in csv.DictReader(io.StringIO("".join(lines[start:]))):
        row = {(k or "").strip(): v for k, v in row.items()}
        if (row.get("data_type") or "text").strip() != "text" or not row.get("assistant_response"):
            continue
        rows.append({"prompt": row.get("objective") or "", "response": row["assistant_response"],
                     "label": int(float(row["human_score"])) >= 1, "file": path.name})  # fmt: skip
    return rows


@lru_cache(maxsize=None)
def _rows(task: str) -> tuple[dict, ...]:
    return tuple(r for p in csv_files(task) for r in read_labelled_csv(p))


def labelled(task: str) -> list[dict]:
    """Every human-labelled row of a task (copies)."""
    return [dict(r) for r in _rows(task)]


def is_heldout(objective: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Deterministic, objective-grouped: the same objective text always lands on the same side."""
    key = " ".join(objective.lower().split())
    h = hashlib.sha256(f"{SPLIT_SEED}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def split(task: str, fraction: float = HELDOUT_FRACTION) -> tuple[list[dict], list[dict]]:
    """(train, heldout) rows of a task; no objective and no response text is on both sides."""
    rows = labelled(task)
    held = [r for r in rows if is_heldout(r["prompt"], fraction)]
    held_responses = {r["response"].strip() for r in held}
    train = [r for r in rows if not is_heldout(r["prompt"], fraction) and r["response"].strip() not in held_responses]
    return train, held


def classification_metrics(labels: Sequence[bool], preds: Sequence[bool]) -> dict:
    tp = sum(1 for y, p in zip(labels, preds) if y and p)
    tn = sum(1 for y, p in zip(labels, preds) if not y and not p)
    fp = sum(1 for y, p in zip(labels, preds) if not y and p)
    fn = sum(1 for y, p in zip(labels, preds) if y and not p)
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": n, "accuracy": round((tp + tn) / n, 4) if n else None, "precision": round(precision, 4),
            "recall": round(recall, 4), "f1": round(f1, 4), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "positives": tp + fn, "majority_baseline": round(max(tp + fn, tn + fp) / n, 4) if n else None}  # fmt: skip


def agreement_stats(labels: Sequence[bool], preds: Sequence[bool], samples: int = 1000, seed: int = 0,
                    confidence: float = 0.95) -> dict:  # fmt: skip
    """classification_metrics plus a percentile-bootstrap interval of the accuracy."""
    from ptalign_ray.evaluation.metrics import bootstrap_ci

    out = classification_metrics(labels, preds)
    ci = bootstrap_ci([float(bool(y) == bool(p)) for y, p in zip(labels, preds)], samples, confidence, seed)
    out["accuracy_ci"] = [None if ci["ci_low"] is None else round(ci["ci_low"], 4),
                          None if ci["ci_high"] is None else round(ci["ci_high"], 4)]  # fmt: skip
    return out


def measure(predict, task: str, rows: Optional[list[dict]] = None, **kw) -> dict:
    """Agreement of ``predict(rows) -> list[bool]`` with the human labels of ``rows`` (default: all)."""
    rows = labelled(task) if rows is None else rows
    if not rows:
        return {"n": 0, "note": "pyrit's CSVs are not installed"}
    return agreement_stats([r["label"] for r in rows], list(predict(rows)), **kw)
