import random

import pytest

from ptalign_ray.dedup import lcs_length, near_duplicate_mask, rouge_l_f1, tokenize


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


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_index_filter_is_exact_against_brute_force(threshold):
    rng = random.Random(threshold)
    vocab = "how can i do get make the a to of in my for with without someone people money lock car phone".split()
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 12))) for _ in range(400)]
    # add mutated copies so that many pairs sit near the threshold
    for t in list(texts[:150]):
        words = t.split()
        words[rng.randrange(len(words))] = rng.choice(vocab)
        texts.append(" ".join(words))
    assert near_duplicate_mask(texts, threshold) == _brute_force(texts, threshold)


def test_empty_text_is_dropped():
    assert near_duplicate_mask(["", "How are you doing today?"], 0.7) == [False, True]
