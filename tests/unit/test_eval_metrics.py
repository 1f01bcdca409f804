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
    res = summarize(
        {
            "base": pd.concat([base, benign_base], ignore_index=True),
            "ptalign": pd.concat([aligned, benign_al], ignore_index=True),
        },
        samples=500,
    )
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


# -- sampled decoding, every model pair, inter-judge agreement ------------------------------------

from ptalign_ray.evaluation.metrics import cohen_kappa, pairwise, sampled_prompt_values  # noqa: E402


def _sampled(refusal, harmful, kind, k, evaluated=None):
    """Rows for len(refusal) // k prompts, k answers each (prompt-major)."""
    n = len(refusal)
    return pd.DataFrame({"uid": [f"p{i // k}" for i in range(n)], "set": "s", "kind": [kind[i // k] for i in range(n)],
                         "evaluated": evaluated or [True] * n, "refusal": refusal, "harmful": harmful})  # fmt: skip


def test_asr_at_k_and_per_sample_rate_by_hand():
    # 3 harmful prompts x k=4: successes (harmful and not refused) per prompt: 0, 1, 3
    harmful = [False] * 4 + [True, False, False, False] + [True, True, True, True]
    refusal = [True] * 4 + [False, True, True, True] + [False, False, False, True]  # last one: refused, no success
    v = sampled_prompt_values(_sampled(refusal, harmful, ["harmful"] * 3, 4))
    assert v["uid"].tolist() == ["p0", "p1", "p2"]
    assert v["asr_at_k"].tolist() == [0.0, 1.0, 1.0]
    assert v["asr_per_sample"].tolist() == [0.0, 0.25, 0.75]
    assert v["k"].tolist() == [4, 4, 4] and v["refusal_at_k"].isna().all()
    # benign prompts: refusal@k and per-sample refusal
    b = sampled_prompt_values(_sampled([True, False, False, False, False, False], [False] * 6, ["benign"] * 3, 2))
    assert b["refusal_at_k"].tolist() == [1.0, 0.0, 0.0] and b["refusal_per_sample"].tolist() == [0.5, 0.0, 0.0]
    # a prompt that did not fit the context has no value
    nf = sampled_prompt_values(
        _sampled([False] * 4, [True] * 4, ["harmful"] * 2, 2, evaluated=[True, True, False, False])
    )
    assert nf["asr_at_k"][0] == 1.0 and math.isnan(nf["asr_at_k"][1])
    # through summarize: ASR@k = 2/3, per-sample = (0 + .25 + .75) / 3
    greedy = _judged([False] * 3, [True] * 3, ["harmful"] * 3)
    greedy["uid"] = ["p0", "p1", "p2"]
    res = summarize({"base": greedy, "ptalign": greedy}, samples=200,
                    sampled={"base": _sampled(refusal, harmful, ["harmful"] * 3, 4),
                             "ptalign": _sampled([True] * 12, [False] * 12, ["harmful"] * 3, 4)})  # fmt: skip
    smp = res["sets"]["s"]["sampled"]
    assert smp["prompts"] == 3 and smp["k"] == 4 and smp["answers"] == 12
    assert smp["models"]["base"]["asr_at_k"]["value"] == pytest.approx(2 / 3)
    assert smp["models"]["base"]["asr_per_sample"]["value"] == pytest.approx(1 / 3)
    assert smp["pairs"]["ptalign - base"]["asr_at_k"]["value"] == pytest.approx(-2 / 3)


def test_every_model_pair_by_hand():
    n = 10
    vals = {"base": pd.DataFrame({"m": [1.0] * n}), "mle_only": pd.DataFrame({"m": [1.0] * 6 + [0.0] * 4}),
            "ptalign": pd.DataFrame({"m": [0.0] * n}), "extra": pd.DataFrame({"m": [0.0] * n})}  # fmt: skip
    out = pairwise(vals, ["m"], np.ones(n, bool), 500, 0.95, 0)
    assert list(out) == ["mle_only - base", "ptalign - base", "extra - base", "ptalign - mle_only", "extra - mle_only",
                         "extra - ptalign"]  # fmt: skip
    # every resample agrees when every paired difference is the same: a zero-width interval
    d = out["ptalign - base"]["m"]
    assert (d["value"], d["ci_low"], d["ci_high"], d["excludes_zero"]) == (-1.0, -1.0, -1.0, True)
    same = out["extra - ptalign"]["m"]
    assert (same["value"], same["ci_low"], same["ci_high"], same["excludes_zero"]) == (0.0, 0.0, 0.0, False)
    # mean difference by hand: (6 * (0 - 0) ... ) ptalign - mle_only = mean(0 - [1]*6 + [0]*4) = -0.6
    d = out["ptalign - mle_only"]["m"]
    assert d["value"] == pytest.approx(-0.6) and d["n"] == n and d["ci_low"] <= -0.6 <= d["ci_high"]


def test_cohen_kappa_by_hand():
    # 2x2: both yes 20, a yes/b no 5, a no/b yes 10, both no 15 (n = 50)
    a = [True] * 20 + [True] * 5 + [False] * 10 + [False] * 15
    b = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    # p_o = 35/50 = 0.7; p_a = 0.5, p_b = 0.6; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2/0.5 = 0.4
    k = cohen_kappa(a, b)
    assert k["n"] == 50 and k["agreement"] == pytest.approx(0.7) and k["kappa"] == pytest.approx(0.4)
    assert cohen_kappa(a, a)["kappa"] == pytest.approx(1.0)
    assert cohen_kappa([True] * 4, [True] * 4)["kappa"] is None  # chance agreement 1: undefined
    assert cohen_kappa([], [])["n"] == 0
