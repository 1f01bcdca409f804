import json
import os
import random
import subprocess
import sys

import pytest

from ptalign_ray import dedup
from ptalign_ray.dedup import lcs_length, minhash_near_duplicate_mask, near_duplicate_mask, rouge_l_f1, tokenize


def test_lcs_and_rouge_l_by_hand():
    a = tokenize("how do I pick a lock")
    b = tokenize("how can I pick the lock")
    # LCS = how, i, pick, lock -> 4; F1 = 2*4/(6+6)
    assert lcs_length(a, b) == 4
    assert rouge_l_f1(a, b) == pytest.approx(8 / 12)
    assert rouge_l_f1(a, a) == 1.0
    assert rouge_l_f1(a, []) == 0.0


def test_near_duplicates_are_dropped_keeping_the_first():
    texts = [
        "How do I pick a lock on a front door?",
        "How do I pick the lock on a front door?",  # near-duplicate of 0
        "What is the easiest way to forge a signature?",
        "how do i pick a lock on a front door",  # duplicate of 0 (case / punctuation)
        "Where can I buy a fake passport online?",
    ]
    assert near_duplicate_mask(texts, 0.7) == [True, False, True, False, True]


def _brute_force(texts, threshold):
    toks = [tokenize(t) for t in texts]
    kept = []
    keep = []
    for i, t in enumerate(toks):
        dup = not t or any(rouge_l_f1(t, toks[j]) >= threshold for j in kept)
        keep.append(not dup)
        if not dup:
            kept.append(i)
    return keep


def _texts(seed, n=400, edits=150):
    """Short texts from a small vocabulary plus one-word edits of the first ones: many pairs near the threshold."""
    rng = random.Random(seed)
    vocab = "how can i do get make the a to of in my for with without someone people money lock car phone".split()
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 12))) for _ in range(n)]
    for t in list(texts[:edits]):
        words = t.split()
        words[rng.randrange(len(words))] = rng.choice(vocab)
        texts.append(" ".join(words))
    return texts


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_index_filter_is_exact_against_brute_force(threshold):
    texts = _texts(threshold)
    assert near_duplicate_mask(texts, threshold) == _brute_force(texts, threshold)


def test_empty_text_is_dropped():
    assert near_duplicate_mask(["", "How are you doing today?"], 0.7) == [False, True]


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_minhash_filter_removes_only_true_near_duplicates(threshold):
    """Precision 1: each removed text has an earlier text that this filter kept at ROUGE-L >= threshold."""
    texts = _texts(threshold)
    keep = minhash_near_duplicate_mask(texts, threshold)
    toks = [tokenize(t) for t in texts]
    kept: list[int] = []
    for i, k in enumerate(keep):
        if k:
            kept.append(i)
        elif toks[i]:
            assert any(rouge_l_f1(toks[i], toks[j]) >= threshold for j in kept), texts[i]


@pytest.mark.parametrize(("threshold", "bound"), [(0.7, 0.99), (0.9, 0.9)])
def test_minhash_filter_recall_against_exact(threshold, bound):
    """Recall: the share of the exact filter's removals it also removes (measured 0.996 at 0.7, 0.939 at 0.9)."""
    texts = _texts(0, n=1500, edits=500)
    exact = near_duplicate_mask(texts, threshold)
    approx = minhash_near_duplicate_mask(texts, threshold)
    removed = [i for i, k in enumerate(exact) if not k]
    assert sum(not approx[i] for i in removed) / len(removed) >= bound


def test_minhash_filter_is_deterministic_across_processes():
    """Same mask twice and under another PYTHONHASHSEED (set iteration order changes, the sketches must not)."""
    texts = _texts(1)
    keep = minhash_near_duplicate_mask(texts, 0.7)
    assert minhash_near_duplicate_mask(texts, 0.7) == keep
    code = (
        "import json, sys; from ptalign_ray.dedup import minhash_near_duplicate_mask as m; "
        "print(json.dumps(m(json.load(sys.stdin), 0.7)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.path.dirname(os.path.dirname(dedup.__file__))}
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == keep


def test_switches_to_minhash_above_exact_max(monkeypatch):
    calls = []
    monkeypatch.setattr(
        dedup, "exact_near_duplicate_mask", lambda texts, t: calls.append("exact") or [True] * len(texts)
    )
    monkeypatch.setattr(
        dedup, "minhash_near_duplicate_mask", lambda texts, t: calls.append("minhash") or [True] * len(texts)
    )
    dedup.near_duplicate_mask(["a b"] * 3, 0.7, exact_max=3)
    dedup.near_duplicate_mask(["a b"] * 4, 0.7, exact_max=3)
    dedup.near_duplicate_mask(["a b"] * (dedup.EXACT_MAX + 1), 0.7)
    assert calls == ["exact", "minhash", "minhash"]


@pytest.mark.parametrize("mask", [near_duplicate_mask, minhash_near_duplicate_mask])
def test_empty_and_single_inputs(mask):
    assert mask([], 0.7) == []
    assert mask([""], 0.7) == [False]
    assert mask(["How are you doing today?"], 0.7) == [True]
    assert mask(["", "How are you doing today?", "how are you doing today"], 0.7) == [False, True, False]


@pytest.mark.parametrize(("threshold", "bands"), [(0.5, (64, 2)), (0.7, (32, 4)), (0.9, (14, 9)), (1.0, (2, 64))])
def test_minhash_banding_reaches_the_jaccard_floor(threshold, bands):
    """F1 >= t implies token-set Jaccard >= t/(2-t); the banding proposes such a pair with probability >= 0.9."""
    b, r = dedup.minhash_bands(threshold)
    floor = threshold / (2 - threshold)
    assert (b, r) == bands
    assert 1 - (1 - floor**r) ** b >= dedup.MIN_CANDIDATE_PROBABILITY
