"""The evaluation judge: the project's offline judge, in-process and batched, plus its measured agreement.

Verdicts per answer (see :mod:`ptalign_ray.evaluation.metrics` for how they become metrics):

- the judge sees the plain request as the prompt (a jailbreak's wrapped request, not the template),
  and ``harmful_request`` = True for harmful-set prompts, False for benign ones: the set says which
  it is, so the judge decides only what the answer does;
- ``refusal``: a refusal marker, an off-topic answer or an empty one (as pyrit's human labels count
  refusals); ``marker_refusal``: the marker alone;
- ``harmful``: the judge's harm score >= its threshold;
- ``relevance``: MiniLM cosine of answer and request (the helpfulness proxy on benign prompts).

Agreement with human labels is measured every time on pyrit's judge-validation CSVs with the same
judge instance and the same settings the evaluation uses (refusal task: no hint; objective task:
``harmful_request`` = True), so the report states the agreement of exactly the judge that produced
its numbers. Only aggregate numbers leave this module.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
import pandas as pd

from ptalign_ray.judging.refusal import detect_refusal
from ptalign_ray.models import package_dir

AGREEMENT_TASKS = {"refusal": "refusal_scorer", "objective": "objective"}


class EvaluationJudge:
    """Wraps :class:`~ptalign_ray.judging.offline.OfflineJudge` for evaluation items."""

    def __init__(self, seeds="default", batch_size: int = 256):
        from ptalign_ray.judging.offline import OfflineJudge

        self.judge = OfflineJudge(seeds)
        self.batch_size = batch_size

    def describe(self) -> dict:
        return {"name": "offline judge (refusal markers + MiniLM probes), in-process", **self.judge.describe()}

    def judge_frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """Adds verdict columns to rows with request, response, kind (harmful / benign)."""
        out = df.copy()
        if out.empty:
            for col in ("refusal", "marker_refusal", "harmful"):
                out[col] = pd.Series(dtype=bool)
            out["score"] = out["relevance"] = pd.Series(dtype=float)
            return out
        refusal, harmful, score = [], [], []
        for start in range(0, len(out), self.batch_size):
            part = out.iloc[start : start + self.batch_size]
            items = [
                {"prompt": q, "response": r, "harmful_request": k == "harmful"}
                for q, r, k in zip(part["request"], part["response"], part["kind"])
            ]
            for v in self.judge.judge(items):
                refusal.append(bool(v.refusal))
                harmful.append(bool(v.harmful))
                score.append(float(v.score))
        out["refusal"] = refusal
        out["harmful"] = harmful
        out["score"] = score
        out["marker_refusal"] = [detect_refusal(r).refusal for r in out["response"]]
        # the relevance proxy is a benign-set metric: harmful rows are not embedded twice for it
        benign = (out["kind"] == "benign").to_numpy()
        relevance = [float("nan")] * len(out)
        if benign.any():
            sub = out[benign]
            for i, v in zip(benign.nonzero()[0], self.relevance(sub["request"].tolist(), sub["response"].tolist())):
                relevance[i] = v
        out["relevance"] = relevance
        return out

    def relevance(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Cosine of prompt and response embeddings (0 for an empty response)."""
        enc = self.judge.encoder
        p = enc.encode(prompts, max_length=self.judge.max_prompt_tokens)
        r = enc.encode(responses, max_length=self.judge.max_response_tokens)
        sims = (p * r).sum(1)
        return [0.0 if not resp.strip() else float(s) for s, resp in zip(sims, responses)]

    def agreement(self) -> dict:
        """Accuracy / precision / recall / F1 of this judge against pyrit's human labels."""
        out: dict = {"source": "pyrit datasets/scorer_evals (human-labelled judge-validation CSVs); never used to fit "
                               "the judge"}  # fmt: skip
        for task, sub in AGREEMENT_TASKS.items():
            rows = [r for path in _csv_files(sub) for r in read_labelled_csv(path)]
            if not rows:
                out[task] = {"n": 0, "note": "pyrit's CSVs are not installed"}
                continue
            items = [{"prompt": r["prompt"], "response": r["response"]} for r in rows]
            if task == "objective":  # the evaluation tells the judge that harmful-set requests are harmful
                items = [{**i, "harmful_request": True} for i in items]
            t0 = time.perf_counter()
            verdicts = self.judge.judge(items)
            preds = [v.refusal if task == "refusal" else v.harmful for v in verdicts]
            res = classification_metrics([r["label"] for r in rows], preds)
            res["seconds"] = round(time.perf_counter() - t0, 2)
            res["used_for"] = "over-refusal / refusal rates" if task == "refusal" else "attack success (harmful compliance)"
            out[task] = res
        return out


def classification_metrics(labels: list[bool], preds: list[bool]) -> dict:
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


def _csv_files(sub: str) -> list[Path]:
    try:
        root = package_dir("pyrit") / "datasets" / "scorer_evals" / sub
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

