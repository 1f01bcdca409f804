"""Contamination check: evaluation prompts that also occur in the seeds or the training questions.

An evaluation prompt the model was trained on measures memorisation, not alignment, so it is
excluded from the metrics and counted in the report. Two tests on the plain request (a jailbreak's
wrapped request, not its template):

- exact: equal after normalisation (lowercase, alphanumeric words only, single spaces);
- near-duplicate: ROUGE-L F1 >= threshold on word tokens, the same measure synthesis uses to
  deduplicate questions (:mod:`ptalign_ray.dedup`).

Only pairs sharing enough words can reach the ROUGE-L threshold (LCS <= word overlap), so an
inverted index finds those candidates and the LCS is computed for them alone.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Sequence

from ptalign_ray.dedup import rouge_l_f1, tokenize


def normalize(text: str) -> str:
    return " ".join(tokenize(text))


def find_overlaps(prompts: Sequence[str], references: Sequence[str], threshold: float = 0.7) -> list[dict]:
    """For every prompt: ``{"match": "exact" | "near" | None, "rouge_l": best F1, "ref": index}``."""
    ref_tokens = [tokenize(r) for r in references]
    exact = {}
    for j, toks in enumerate(ref_tokens):
        if toks:
            exact.setdefault(" ".join(toks), j)
    index: dict[str, list[int]] = defaultdict(list)
    ref_counts = [Counter(t) for t in ref_tokens]
    for j, counts in enumerate(ref_counts):
        for tok in counts:
            index[tok].append(j)

    out = []
    for prompt in prompts:
        toks = tokenize(prompt)
        key = " ".join(toks)
        if toks and key in exact:
            out.append({"match": "exact", "rouge_l": 1.0, "ref": exact[key]})
            continue
        counts = Counter(toks)
        shared: dict[int, int] = defaultdict(int)
        for tok, c in counts.items():
            for j in index.get(tok, ()):
                shared[j] += min(c, ref_counts[j][tok])
        best, best_j = 0.0, None
        n = len(toks)
        for j, common in shared.items():
            # ROUGE-L F1 = 2*LCS/(n+m) and LCS <= common words: skip pairs that cannot reach the threshold
            bound = 2.0 * common / (n + len(ref_tokens[j]))
            if bound < threshold - 1e-12 or bound <= best:
                continue
            f1 = rouge_l_f1(toks, ref_tokens[j])
            if f1 > best:
                best, best_j = f1, j
        match = "near" if best >= threshold and best_j is not None else None
        out.append({"match": match, "rouge_l": round(best, 4), "ref": best_j})
    return out


def overlap_report(df, references: dict[str, Sequence[str]], threshold: float) -> tuple[list[bool], dict]:
    """Checks ``df["request"]`` against every named reference list (seeds, synthesis, refinement).

    Returns (excluded mask aligned with df, report with counts per set and per source). The report
    names ids only, never texts.
    """
    names = list(references)
    all_refs: list[str] = []
    source_of: list[str] = []
    for name in names:
        all_refs.extend(references[name])
        source_of.extend([name] * len(references[name]))
    matches = (
        find_overlaps(df["request"].tolist(), all_refs, threshold)
        if all_refs
        else [{"match": None, "rouge_l": 0.0, "ref": None} for _ in range(len(df))]
    )
    excluded = [m["match"] is not None for m in matches]
    per_set: dict[str, dict] = {}
    for (set_name, rid), m in zip(zip(df["set"], df["id"]), matches):
        s = per_set.setdefault(set_name, {"prompts": 0, "exact": 0, "near": 0, "excluded_ids": []})
        s["prompts"] += 1
        if m["match"]:
            s[m["match"]] += 1
            s["excluded_ids"].append(
                {"id": rid, "match": m["match"], "rouge_l": m["rouge_l"], "source": source_of[m["ref"]]}
            )
    report = {
        "method": f"normalised exact match, or ROUGE-L F1 >= {threshold} on word tokens, between each evaluation "
        "request (jailbreaks: the wrapped request) and every seed / synthesised / refined question",
        "threshold": threshold,
        "references": {name: len(references[name]) for name in names},
        "per_set": per_set,
        "excluded_total": int(sum(excluded)),
        "note": "overlapping prompts are excluded from every metric",
    }
    return excluded, report
