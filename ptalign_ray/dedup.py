"""Near-duplicate removal of questions by ROUGE-L F1: exact up to EXACT_MAX texts, MinHash LSH above.

ROUGE-L F1 of token sequences a, b is 2*LCS/(|a|+|b|). F1 >= t needs LCS >= t*(|a|+|b|)/2, and
LCS is at most the multiset overlap of tokens. So only pairs sharing that many tokens can be
duplicates, which is a set-similarity join: tokens are ordered rarest first (occurrences made
distinct), an inverted index over each kept text's prefix finds the pairs that can still reach the
overlap, and the length and positional filters prune most of them before any LCS is computed. The
filters never drop a true duplicate (a test checks the result against all-pairs comparison).

On template-heavy text (most pairs share many words) that exact join still grows close to
quadratically, so above EXACT_MAX texts candidates come from MinHash LSH instead (datasketch) and
are verified with the same exact ROUGE-L: precision stays exact, a pair LSH never proposes is a
missed duplicate (bench/dedup_scale.py measures how many).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Sequence

EXACT_MAX = 10_000
"""Above this many texts near_duplicate_mask uses MinHash LSH: on bench/dedup_scale.py's template set
exact takes 2.4 s of CPU at 10k texts, then grows about quadratically (26 s at 30k, 305 s at 100k);
MinHash takes 1.8, 7 and 41 s and removes 99.7-99.9% of what exact removes (docs/benchmarks.md)."""
MINHASH_PERMUTATIONS = 128
MINHASH_SEED = 1
MIN_CANDIDATE_PROBABILITY = 0.9
"""Banding is the most selective one that still proposes a pair at the Jaccard floor with at least
this probability; pairs above the floor (most duplicates) are proposed more often."""

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_f1(a: Sequence[str], b: Sequence[str]) -> float:
    if not a or not b:
        return 0.0
    return 2.0 * lcs_length(a, b) / (len(a) + len(b))


def _distinct(tokens: list[str]) -> frozenset[str]:
    """Makes repeated tokens distinct ('the', 'the#2') so set overlap == multiset overlap."""
    seen: Counter = Counter()
    out = []
    for t in tokens:
        seen[t] += 1
        out.append(t if seen[t] == 1 else f"{t}#{seen[t]}")
    return frozenset(out)


def near_duplicate_mask(texts: Sequence[str], threshold: float = 0.7, exact_max: int = EXACT_MAX) -> list[bool]:
    """keep[i] is False when texts[i] is a near-duplicate (ROUGE-L F1 >= threshold) of an earlier kept text.

    Exact up to exact_max texts; above it MinHash LSH keeps the cost near-linear and may keep a few
    duplicates (never drops a text that is not one). Empty texts are never kept.
    """
    if len(texts) > exact_max:
        return minhash_near_duplicate_mask(texts, threshold)
    return exact_near_duplicate_mask(texts, threshold)


def _is_duplicate(a: list[str], a_set: frozenset[str], b: list[str], b_set: frozenset[str], threshold: float) -> bool:
    """Exact ROUGE-L F1 >= threshold, after the cheap token-overlap bound rules most pairs out."""
    need = math.ceil(threshold * (len(a) + len(b)) / 2 - 1e-9)
    return len(a_set & b_set) >= need and rouge_l_f1(a, b) >= threshold


def exact_near_duplicate_mask(texts: Sequence[str], threshold: float = 0.7) -> list[bool]:
    """near_duplicate_mask with exact all-pairs semantics at any size.

    Exact all-pairs semantics, computed with the prefix, length and positional filters of PPJoin
    (Xiao et al., 2008): only pairs whose token overlap can still reach the threshold are verified
    with an LCS.
    """
    toks = [tokenize(t) for t in texts]
    sets = [_distinct(t) for t in toks]
    freq = Counter(tok for s in sets for tok in s)
    order = [sorted(s, key=lambda tok: (freq[tok], tok)) for s in sets]

    index: dict[str, list[tuple[int, int]]] = defaultdict(list)  # token -> (kept text, position)
    keep = [False] * len(texts)
    lo_ratio, hi_ratio = threshold / (2 - threshold), (2 - threshold) / threshold
    for i, tokens in enumerate(order):
        n = len(tokens)
        if n == 0:
            continue
        # Any duplicate shares at least ceil(t*(n+m)/2) >= ceil(t*n/2) tokens (m >= 1), so one of
        # them lies in the first n - that + 1 tokens of both sides (prefix filter).
        prefix_len = n - max(1, math.ceil(threshold * n / 2 - 1e-9)) + 1
        overlap: dict[int, int] = {}
        for pos, tok in enumerate(tokens[:prefix_len]):
            for j, jpos in index.get(tok, ()):
                seen = overlap.get(j, 0)
                if seen < 0:
                    continue
                m = len(order[j])
                if not lo_ratio * n - 1e-9 <= m <= hi_ratio * n + 1e-9:  # length filter
                    overlap[j] = -1
                    continue
                need = math.ceil(threshold * (n + m) / 2 - 1e-9)
                # positional filter: tokens after both positions are all that can still match
                if seen + 1 + min(n - pos - 1, m - jpos - 1) < need:
                    overlap[j] = -1
                else:
                    overlap[j] = seen + 1
        duplicate = any(
            c > 0 and _is_duplicate(toks[i], sets[i], toks[j], sets[j], threshold) for j, c in overlap.items()
        )
        if not duplicate:
            keep[i] = True
            for pos, tok in enumerate(tokens[:prefix_len]):
                index[tok].append((i, pos))
    return keep


def minhash_bands(threshold: float, num_perm: int = MINHASH_PERMUTATIONS) -> tuple[int, int]:
    """(bands, rows) of the LSH index for a ROUGE-L threshold.

    F1 >= t needs a token overlap of t*(n+m)/2, so the Jaccard similarity of the two token sets is
    at least t/(2-t) (0.54 at t = 0.7). A pair at Jaccard s shares a band with probability
    1-(1-s^rows)^bands; more rows per band mean fewer chance candidates, so take the most rows that
    still reach MIN_CANDIDATE_PROBABILITY at that floor (t = 0.7: 32 bands of 4 rows, 0.94).
    """
    floor = threshold / (2 - threshold)
    rows = 1
    for r in range(1, num_perm // 2 + 1):
        if 1 - (1 - floor**r) ** (num_perm // r) >= MIN_CANDIDATE_PROBABILITY:
            rows = r
    return num_perm // rows, rows


def minhash_near_duplicate_mask(texts: Sequence[str], threshold: float = 0.7, seed: int = MINHASH_SEED) -> list[bool]:
    """near_duplicate_mask with MinHash LSH candidates: keep-first, same threshold, deterministic for a seed.

    Each kept text's token set (repeats made distinct, as in the exact filter) is sketched and
    indexed; a text is a duplicate when a candidate the index proposes passes the exact ROUGE-L
    check. So every removed text is a true near-duplicate; what is traded is recall, the duplicate
    pairs whose sketches share no band.
    """
    from datasketch import MinHash, MinHashLSH  # imports scipy: only paid above EXACT_MAX

    toks = [tokenize(t) for t in texts]
    sets = [_distinct(t) for t in toks]
    lsh = MinHashLSH(num_perm=MINHASH_PERMUTATIONS, params=minhash_bands(threshold))
    sketches = MinHash.generator(
        ([tok.encode() for tok in s] for s in sets), num_perm=MINHASH_PERMUTATIONS, seed=seed
    )  # a set's sketch does not depend on its iteration order, so neither does the result
    keep = [False] * len(texts)
    for i, sketch in enumerate(sketches):
        if not toks[i]:
            continue
        if not any(_is_duplicate(toks[i], sets[i], toks[j], sets[j], threshold) for j in lsh.query(sketch)):
            keep[i] = True
            lsh.insert(i, sketch, check_duplication=False)
    return keep
