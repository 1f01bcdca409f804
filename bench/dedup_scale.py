"""Benchmark: the exact ROUGE-L near-duplicate filter at 1k-100k questions vs all-pairs comparison.

Questions are synthetic (a template grammar; 30% are one-word edits of earlier ones), so many pairs
sit near the 0.7 threshold, as in real synthesis output. All-pairs is timed on the smaller sizes only and
extrapolated quadratically for the larger ones.

Usage: .venv/bin/python bench/dedup_scale.py [--sizes 1000 10000 100000] [--out FILE]
"""

from __future__ import annotations

import argparse
import random
import time

from synthesis_throughput import machine, report

from ptalign_ray.dedup import near_duplicate_mask, rouge_l_f1, tokenize

STARTS = [
    "How can I",
    "What is the best way to",
    "Where can I",
    "Is it possible to",
    "Tell me how to",
    "Explain how to",
]


def questions(n: int, seed: int = 0) -> list[str]:
    """About 70% distinct requests and 30% one-word edits of earlier ones (near-duplicates)."""
    rng = random.Random(seed)
    verbs = [f"verb{i}" for i in range(500)]
    nouns = [f"noun{i}" for i in range(5000)]
    mods = ["quickly", "without anyone noticing", "at night", "for free", "online", "at school", "with friends"]
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < 0.3:
            words = rng.choice(out).split()
            words[rng.randrange(len(words))] = rng.choice(nouns)
            out.append(" ".join(words))
        else:
            out.append(
                f"{rng.choice(STARTS)} {rng.choice(verbs)} the {rng.choice(nouns)} of my {rng.choice(nouns)} {rng.choice(mods)}?"
            )
    return out


def all_pairs(texts: list[str], threshold: float) -> list[bool]:
    toks = [tokenize(t) for t in texts]
    kept: list[int] = []
    keep = []
    for i, t in enumerate(toks):
        dup = any(rouge_l_f1(t, toks[j]) >= threshold for j in kept)
        keep.append(not dup)
        if not dup:
            kept.append(i)
    return keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--brute-max", type=int, default=2000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    brute_rate = None
    for n in args.sizes:
        texts = questions(n)
        t0 = time.perf_counter()
        keep = near_duplicate_mask(texts, args.threshold)
        fast_s = time.perf_counter() - t0
        row = {"questions": n, "kept": sum(keep), "indexed_s": round(fast_s, 2)}
        if n <= args.brute_max:
            t0 = time.perf_counter()
            assert all_pairs(texts, args.threshold) == keep  # exact: same decisions
            brute_s = time.perf_counter() - t0
            brute_rate = brute_s / n**2
            row["all_pairs_s"] = round(brute_s, 2)
        elif brute_rate:
            row["all_pairs_s_extrapolated"] = round(brute_rate * n**2, 1)
        rows.append(row)
        print(row, flush=True)
    result = {"machine": machine(), "threshold": args.threshold, "rows": rows}
    report(result, args.out)


if __name__ == "__main__":
    main()
