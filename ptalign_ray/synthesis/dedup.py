"""Near-duplicate removal of questions by ROUGE-L F1, exact and sub-quadratic.

ROUGE-L F1 of token sequences a, b is 2*LCS/(|a|+|b|). F1 >= t needs LCS >= t*(|a|+|b|)/2, and
LCS is at most the multiset overlap of tokens. So only pairs sharing that many tokens can be
duplicates. With the classic prefix filter (tokens ordered rarest first, occurrences made
distinct), such pairs must share a token among the first few of each side, which an inverted index
finds without comparing all pairs. The filter never drops a true duplicate; LCS is then computed
only for the candidates. At 100k short questions this is seconds, not hours.
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


def _distinct(tokens: list[str]) -> list[str]:
    """Makes repeated tokens distinct ('the', 'the#2') so set overlap == multiset overlap."""
    seen: Counter = Counter()
    out = []
    for t in tokens:
        seen[t] += 1
        out.append(t if seen[t] == 1 else f"{t}#{seen[t]}")
    return out


def near_duplicate_mask(texts: Sequence[str], threshold: float = 0.7) -> list[bool]:
    """keep[i] is False when texts[i] is a near-duplicate (ROUGE-L F1 >= threshold) of an earlier kept text."""
    toks = [tokenize(t) for t in texts]
    sets = [_distinct(t) for t in toks]
    freq = Counter(tok for s in sets for tok in set(s))
    order = [sorted(s, key=lambda tok: (freq[tok], tok)) for s in sets]

    index: dict[str, list[int]] = defaultdict(list)  # token -> kept texts with it in their prefix
    keep = [False] * len(texts)
    for i, tokens in enumerate(order):
        n = len(tokens)
        if n == 0:
            continue
        # Smallest overlap any duplicate needs is t*(n+m)/2 >= t*n/2 (m >= 1); the prefix must
        # be long enough to hit one shared token among those: n - ceil(min_overlap) + 1.
        min_overlap = max(1, math.ceil(threshold * n / 2 - 1e-9))
        prefix = tokens[: n - min_overlap + 1]
        candidates = {j for tok in prefix for j in index.get(tok, ())}
        duplicate = any(rouge_l_f1(toks[i], toks[j]) >= threshold for j in candidates)
        if not duplicate:
            keep[i] = True
            for tok in prefix:
                index[tok].append(i)
    return keep
