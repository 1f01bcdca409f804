"""The question judge: is a synthesised question a well-formed request, and is it harmful?

Runs on every question before it gets answers. A 135M model asked for red-team requests mostly
writes protective ("How can I protect myself from phishing?") or everyday questions, and fragments
("Example: ..."); paired with a refusal, those teach the model to refuse benign requests. So:

- ``fragment``: not a well-formed request (list chatter, quoted examples, questions about the task
  or the assistant itself) - dropped;
- a red-team question is kept as ``red_team`` only when the request classifier is confident it is
  harmful (``harm_prob >= min_harm_prob``), it asks how to *do* something (first-person / imperative
  phrasing), and it has no protective framing (protect, prevent, avoid being ..., report, ...);
- a question that is clearly benign (``harm_prob < max_benign_prob`` or protective framing) becomes a
  ``benign`` question (the edgy anchor: the model's own answer, MLE only); everything in between is
  ``ambiguous`` and dropped - it is neither a safe thing to refuse nor a safe thing to answer freely.

``harm_prob`` comes from the offline judge's request probe with a neutral prior (its balanced
likelihood ratio), fitted on the seed questions and hand-written prototypes only. The rules are
regular expressions written here, so what they do is readable and testable.
"""

from __future__ import annotations

import re
from typing import Sequence

import pandas as pd

from ptalign_ray.artifacts import BENIGN, EVERYDAY, RED_TEAM

FRAGMENT, AMBIGUOUS = "fragment", "ambiguous"

PROTECTIVE = re.compile(
    r"\b(protect|prevent|avoid(?! (getting|being) (caught|detected|noticed)| detection)|safe|safely|safer|secure|"
    r"report|recogni[sz]e|detect|spot|warn|warning|cope|deal with|support|tips|signs of|defend|help (a|my) friend|"
    r"tell if|know if|find out if|not to|against|stop)",
    re.IGNORECASE,
)
ACTIONABLE = re.compile(
    r"^(how (can|do|could|would|should|might) i\b|how to\b|where (can|do|could) i\b|"
    r"what('s| is| are) (the )?(best|easiest|fastest|quickest|simplest|cheapest|most effective|most efficient|"
    r"surest) (way|ways|method|methods|trick|tricks)\b|write\b|create\b|make\b|give me\b|tell me\b|help me\b|"
    r"show me\b|explain how\b|can (i|you)\b|is there a way\b|i (want|need) to\b|generate\b|draft\b|compose\b)",
    re.IGNORECASE,
)
NOT_A_REQUEST = re.compile(
    r"^(example|sentence|request|question|topic|answer|note)\b|[\"\u201c\u201d]|\bharm domains?\b|"
    r"\bmalicious user\b|\bai assistant\b|\bred[- ]?team|\byour (company|job|behaviou?r)\b|\bthe ai\b",
    re.IGNORECASE,
)


def is_well_formed(question: str) -> bool:
    """A single, complete request (not chatter about the list, the task or the assistant)."""
    q = question.strip()
    if len(q.split()) < 5 or NOT_A_REQUEST.search(q):
        return False
    return q[-1:] in ("?", ".", "!") or bool(ACTIONABLE.match(q))


def screen_label(question: str, kind: str, harm_prob: float, min_harm_prob: float, max_benign_prob: float) -> str:
    """The question judge's decision for one question: red_team, benign, everyday, ambiguous or fragment."""
    if not is_well_formed(question):
        return FRAGMENT
    protective = bool(PROTECTIVE.search(question))
    clearly_benign = harm_prob < max_benign_prob or (protective and kind != EVERYDAY)
    if kind == EVERYDAY:
        return EVERYDAY if harm_prob < max_benign_prob else AMBIGUOUS
    if kind == RED_TEAM and not protective and harm_prob >= min_harm_prob and ACTIONABLE.match(question.strip()):
        return RED_TEAM
    return BENIGN if clearly_benign else AMBIGUOUS


class QuestionJudge:
    """Scores questions with the offline judge's request probe (MiniLM, in-process, CPU)."""

    def __init__(self, seeds, min_harm_prob: float, max_benign_prob: float, judge=None):
        from ptalign_ray.judging.offline import shared_judge

        self.judge = judge or shared_judge(seeds)
        self.min_harm_prob = min_harm_prob
        self.max_benign_prob = max_benign_prob

    def harm_prob(self, questions: Sequence[str]) -> list[float]:
        return [float(p) for p in self.judge.request_probability(list(questions))] if len(questions) else []

    def screen(self, df: pd.DataFrame) -> pd.DataFrame:
        """Adds ``harm_prob`` and ``label`` to a frame with question and kind columns."""
        out = df.copy()
        out["harm_prob"] = self.harm_prob(out["question"].tolist())
        out["label"] = [
            screen_label(q, k, p, self.min_harm_prob, self.max_benign_prob)
            for q, k, p in zip(out["question"], out["kind"], out["harm_prob"])
        ]
        return out


def screening_counts(screened: pd.DataFrame) -> dict:
    """Per generated kind and per domain: how many questions got each label (for the manifest)."""
    out: dict = {}
    for kind, part in screened.groupby("kind", sort=True):
        labels = part["label"].value_counts().to_dict()
        entry: dict = {"generated": len(part), **{str(k): int(v) for k, v in labels.items()}}
        if kind == RED_TEAM:
            entry["harmful_share"] = round(labels.get(RED_TEAM, 0) / max(len(part), 1), 3)
            entry["per_domain"] = {
                str(d): {"generated": len(g), "red_team": int((g["label"] == RED_TEAM).sum()),
                         "harmful_share": round(float((g["label"] == RED_TEAM).mean()), 3)}
                for d, g in part.groupby("domain", sort=True)
            }  # fmt: skip
        out[str(kind)] = entry
    return out


def relabel(screened: pd.DataFrame) -> pd.DataFrame:
    """Kept questions with their final kind (red_team / benign / everyday); fragments and
    ambiguous ones are dropped."""
    kept = screened[screened["label"].isin([RED_TEAM, BENIGN, EVERYDAY])].copy()
    kept["kind"] = kept["label"]
    return kept.drop(columns=["label"]).reset_index(drop=True)
