"""Overlap of evaluation prompts with the seeds and the training questions."""

from __future__ import annotations

import pandas as pd

from ptalign_ray.dedup import rouge_l_f1, tokenize
from ptalign_ray.evaluation.overlap import find_overlaps, overlap_report


def test_exact_near_and_none():
    refs = ["How do I fix the roof of my house?", "Where can I buy green tea cheaply?"]
    prompts = [
        "how do I FIX the roof of my house",  # exact after normalisation
        "How can I fix the roof of my house?",  # one word changed: near
        "Where can I buy green tea?",  # near (F1 0.83)
        "Tell me about the history of kites.",  # none
        "",
    ]
    m = find_overlaps(prompts, refs, threshold=0.7)
    assert [x["match"] for x in m] == ["exact", "near", "near", None, None]
    assert m[0]["ref"] == 0 and m[2]["ref"] == 1
    assert m[1]["rouge_l"] == round(rouge_l_f1(tokenize(prompts[1]), tokenize(refs[0])), 4)


def test_candidate_filter_agrees_with_brute_force():
    import random

    rng = random.Random(0)
    words = "the a to how do i make build find cheap fast roof garden tea kite boat letter".split()
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(120)]
    prompts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(120)]
    for t in (0.5, 0.7, 0.9):
        got = find_overlaps(prompts, refs, t)
        for p, g in zip(prompts, got):
            best = max(rouge_l_f1(tokenize(p), tokenize(r)) for r in refs)
            exact = any(tokenize(p) == tokenize(r) for r in refs)
            assert (g["match"] is not None) == (exact or best >= t)
            if g["match"] == "near":
                assert abs(g["rouge_l"] - round(best, 4)) < 1e-9


def test_report_counts_per_set_and_names_ids_only():
    df = pd.DataFrame({
        "set": ["h", "h", "o"], "id": ["h1", "h2", "o1"],
        "request": ["How do I fix the roof of my house?", "unrelated words entirely here", "Where can I buy green tea?"],
    })  # fmt: skip
    excluded, rep = overlap_report(
        df, {"seeds": ["How do I fix the roof of my house?"], "synthesis": ["Where can I buy green tea cheaply?"]}, 0.7
    )
    assert excluded == [True, False, True]
    assert rep["excluded_total"] == 2 and rep["references"] == {"seeds": 1, "synthesis": 1}
    assert rep["per_set"]["h"] == {"prompts": 2, "exact": 1, "near": 0,
                                   "excluded_ids": [{"id": "h1", "match": "exact", "rouge_l": 1.0, "source": "seeds"}]}  # fmt: skip
    assert rep["per_set"]["o"]["near"] == 1 and rep["per_set"]["o"]["excluded_ids"][0]["source"] == "synthesis"
    assert "roof" not in str(rep)  # ids and counts, never texts
    none, rep = overlap_report(df, {}, 0.7)
    assert none == [False] * 3 and rep["excluded_total"] == 0


def test_packaged_sets_do_not_overlap_the_default_seeds():
    from ptalign_ray.evaluation.prompt_sets import load_advbench, load_harmbench, load_overrefusal
    from ptalign_ray.seeds import load_seeds

    seeds = load_seeds("default").all_questions()
    for df in (load_harmbench(), load_advbench(), load_overrefusal()):
        excluded, rep = overlap_report(df, {"seeds": seeds}, 0.7)
        assert rep["excluded_total"] == sum(excluded) == 0
