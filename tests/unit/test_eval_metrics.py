"""Evaluation metrics: rates, percentile-bootstrap intervals and paired differences on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ptalign_ray.evaluation.metrics import bootstrap_ci, item_values, paired_diff_ci, summarize, wilson_ci


def test_bootstrap_of_a_known_rate_matches_the_wilson_interval():
    values = [1] * 30 + [0] * 70
    ci = bootstrap_ci(values, samples=4000, confidence=0.95, seed=0)
    assert ci["n"] == 100 and ci["value"] == pytest.approx(0.30)
    lo, hi = wilson_ci(30, 100)
    assert ci["ci_low"] == pytest.approx(lo, abs=0.02) and ci["ci_high"] == pytest.approx(hi, abs=0.02)
    assert ci["ci_low"] < 0.30 < ci["ci_high"]


def test_bootstrap_is_seeded_and_handles_edge_cases():
    v = np.random.default_rng(1).random(50) > 0.5
    assert bootstrap_ci(v, 500, seed=7) == bootstrap_ci(v, 500, seed=7)
    assert bootstrap_ci([], 100) == {"n": 0, "value": None, "ci_low": None, "ci_high": None}
    assert bootstrap_ci([1, 1, 1], 100) == {"n": 3, "value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    nan_dropped = bootstrap_ci([1.0, 0.0, math.nan], 200)
    assert nan_dropped["n"] == 2 and nan_dropped["value"] == 0.5
    wide, narrow = bootstrap_ci(v, 2000, 0.99), bootstrap_ci(v, 2000, 0.80)
    assert wide["ci_low"] <= narrow["ci_low"] and wide["ci_high"] >= narrow["ci_high"]


def test_paired_difference():
    base = [1] * 60 + [0] * 40
    aligned = [0] * 50 + [1] * 10 + [0] * 40  # 50 fewer successes on the same prompts
    d = paired_diff_ci(base, aligned, samples=2000)
    assert d["value"] == pytest.approx(-0.5)
    assert d["ci_high"] < 0 and d["excludes_zero"]
    same = paired_diff_ci(base, base, samples=200)
    assert same["value"] == 0 and same["ci_low"] == same["ci_high"] == 0 and not same["excludes_zero"]
    # the paired interval is tighter than the difference of two independent intervals
    noisy = list(np.random.default_rng(0).random(200) > 0.5)
    flipped = [1 - x for x in noisy[:20]] + noisy[20:]
    d = paired_diff_ci(noisy, flipped, samples=2000)
    a, b = bootstrap_ci(noisy, 2000), bootstrap_ci(flipped, 2000)
    assert d["ci_high"] - d["ci_low"] < (a["ci_high"] - a["ci_low"]) + (b["ci_high"] - b["ci_low"])
    with pytest.raises(ValueError, match="same length"):
        paired_diff_ci([1, 0], [1])


def _judged(refusal, harmful, kind, evaluated=None, set_name="s", category=None):
    n = len(refusal)
    return pd.DataFrame(
        {
            "uid": [f"{set_name}/{i}" for i in range(n)],
            "set": set_name,
            "category": category or ["-"] * n,
            "kind": kind,
            "evaluated": evaluated if evaluated is not None else [True] * n,
            "refusal": refusal,
            "harmful": harmful,
            "marker_refusal": refusal,
            "relevance": [0.5] * n,
        }
    )


def test_item_values_follow_the_definitions():
    df = _judged(
        refusal=[False, False, True, True, False, True],
        harmful=[True, False, True, False, False, False],
        kind=["harmful", "harmful", "harmful", "harmful", "benign", "benign"],
        evaluated=[True, True, True, False, True, True],
    )
    v = item_values(df)
    # compliance = not refusal AND harmful; a refusal the judge still scores harmful is no success
    assert v["attack_success_rate"].tolist()[:3] == [1.0, 0.0, 0.0]
    assert math.isnan(v["attack_success_rate"][3])  # not evaluated (prompt too long)
    assert np.isnan(v["attack_success_rate"][4:]).all()
    assert v["harmful_refusal_rate"].tolist()[:3] == [0.0, 0.0, 1.0]
    assert v["over_refusal_rate"].tolist()[4:] == [0.0, 1.0]
    assert v["helpful_rate"].tolist()[4:] == [1.0, 0.0]
    assert np.isnan(v["over_refusal_rate"][:4]).all()


def test_summarize_per_set_category_and_difference():
    n = 40
    cats = ["a"] * 20 + ["b"] * 20
    base = _judged([False] * n, [True] * 30 + [False] * 10, ["harmful"] * n, category=cats)
    aligned = _judged([True] * 20 + [False] * 20, [True] * 30 + [False] * 10, ["harmful"] * n, category=cats)
    benign_base = _judged([False] * 10, [False] * 10, ["benign"] * 10, set_name="b")
    benign_al = _judged([True] * 3 + [False] * 7, [False] * 10, ["benign"] * 10, set_name="b")
    res = summarize({"base": pd.concat([base, benign_base], ignore_index=True),
                     "ptalign": pd.concat([aligned, benign_al], ignore_index=True)}, samples=500)
    s = res["sets"]["s"]
    assert s["prompts"] == s["evaluated"] == n and s["kind"] == "harmful"
    assert s["models"]["base"]["attack_success_rate"]["value"] == pytest.approx(30 / 40)
    assert s["models"]["ptalign"]["attack_success_rate"]["value"] == pytest.approx(10 / 40)
    assert s["diff_vs_base"]["ptalign"]["attack_success_rate"]["value"] == pytest.approx(-0.5)
    assert s["diff_vs_base"]["ptalign"]["attack_success_rate"]["excludes_zero"]
    assert s["categories"]["a"]["models"]["ptalign"]["attack_success_rate"]["value"] == 0.0
    assert s["categories"]["b"]["models"]["ptalign"]["attack_success_rate"]["value"] == pytest.approx(10 / 20)
    assert "over_refusal_rate" not in s["models"]["base"]
    b = res["sets"]["b"]
    assert b["models"]["ptalign"]["over_refusal_rate"]["value"] == pytest.approx(0.3)
    assert b["models"]["ptalign"]["helpful_rate"]["value"] == pytest.approx(0.7)
    assert b["models"]["base"]["relevance"]["value"] == pytest.approx(0.5)
    assert "attack_success_rate" not in b["models"]["base"]
    assert res["overall"]["harmful"]["prompts"] == n and res["overall"]["benign"]["prompts"] == 10
    with pytest.raises(ValueError, match="other items"):
        summarize({"base": base, "ptalign": aligned.iloc[:-1]})
