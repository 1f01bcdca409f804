"""Near-duplicate removal of questions by ROUGE-L F1, exact and sub-quadratic.

ROUGE-L F1 of token sequences a, b is 2*LCS/(|a|+|b|). F1 >= t needs LCS >= t*(|a|+|b|)/2, and
LCS is at most the multiset overlap of tokens. So only pairs sharing that many tokens can be
duplicates, which is a set-similarity join: tokens are ordered rarest first (occurrences made
distinct), an inverted index over each kept text's prefix finds the pairs that can still reach the
overlap, and the length and positional filters prune most of them before any LCS is computed. The
filters never drop a true duplicate (a test checks the result against all-pairs comparison).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Sequence

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


def near_duplicate_mask(texts: Sequence[str], threshold: float = 0.7) -> list[bool]:
    """keep[i] is False when texts[i] is a near-duplicate (ROUGE-L F1 >= threshold) of an earlier kept text.

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
            c > 0 and len(sets[i] & sets[j]) >= math.ceil(threshold * (n + len(order[j])) / 2 - 1e-9)
            and rouge_l_f1(toks[i], toks[j]) >= threshold
            for j, c in overlap.items()
        )  # fmt: skip
        if not duplicate:
            keep[i] = True
            for pos, tok in enumerate(tokens[:prefix_len]):
                index[tok].append((i, pos))
    return keep
