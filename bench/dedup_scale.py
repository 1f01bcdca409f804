"""Benchmark: the near-duplicate filters, exact ROUGE-L (PPJoin) vs MinHash LSH, and the recall MinHash trades.

Questions are synthetic (a template grammar; 30% are one-word edits of earlier ones), so many pairs
sit near the 0.7 threshold, as in real synthesis output. Times are CPU seconds of this process
(time.process_time: the machine is shared, wall time would measure the other jobs too). All-pairs
comparison runs on the smallest sizes only (and must agree with exact); exact runs up to --exact-max.
Where both ran, recall is the share of the texts exact removes that MinHash removes too, and
agreement the share of texts with the same keep/drop decision.

Usage: .venv/bin/python bench/dedup_scale.py [--sizes 1000 10000 30000 100000] [--exact-max 100000] [--out FILE]
       [--append] (keeps FILE's rows of other sizes: a large size can run on its own, within a CPU budget)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

from synthesis_throughput import machine, report

from ptalign_ray.dedup import (
    MINHASH_PERMUTATIONS,
    MINHASH_SEED,
    exact_near_duplicate_mask,
    minhash_bands,
    minhash_near_duplicate_mask,
    rouge_l_f1,
    tokenize,
)

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


def timed(fn, *args):
    t0 = time.process_time()
    out = fn(*args)
    return out, round(time.process_time() - t0, 2)


def compare(exact: list[bool], approx: list[bool]) -> dict:
    removed = [i for i, k in enumerate(exact) if not k]
    return {
        "recall": round(sum(not approx[i] for i in removed) / max(1, len(removed)), 4),
        "kept_agreement": round(sum(a == b for a, b in zip(exact, approx)) / max(1, len(exact)), 4),
        "minhash_only_removed": sum(a and not b for a, b in zip(exact, approx)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 30000, 100000])
    ap.add_argument("--threshold", type=float, default=0.7)
    ap.add_argument("--brute-max", type=int, default=1000)
    ap.add_argument("--exact-max", type=int, default=100000)
    ap.add_argument("--out", default=None)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    minhash_near_duplicate_mask(["warm up the datasketch and scipy imports"], args.threshold)
    rows = []
    if args.append and args.out and os.path.exists(args.out):
        with open(args.out) as f:
            rows = [r for r in json.load(f)["rows"] if r["questions"] not in args.sizes]
    for n in args.sizes:
        texts = questions(n)
        row: dict = {"questions": n, "load_average_1m": round(os.getloadavg()[0], 1)}
        approx, row["minhash_s"] = timed(minhash_near_duplicate_mask, texts, args.threshold)
        row["minhash_kept"] = sum(approx)
        if n <= args.exact_max:
            exact, row["exact_s"] = timed(exact_near_duplicate_mask, texts, args.threshold)
            row["exact_kept"] = sum(exact)
            row |= compare(exact, approx)
            if n <= args.brute_max:
                brute, row["all_pairs_s"] = timed(all_pairs, texts, args.threshold)
                assert brute == exact  # exact: same decisions
        rows.append(row)
        print(row, flush=True)
    result = {
        "machine": machine() + ", shared with other jobs, no GPU",
        "times": "CPU seconds (time.process_time) of one process; load_average_1m: the machine's, as a row starts",
        "threshold": args.threshold,
        "minhash": {
            "num_perm": MINHASH_PERMUTATIONS,
            "bands_rows": minhash_bands(args.threshold),
            "seed": MINHASH_SEED,
        },
        "rows": sorted(rows, key=lambda r: r["questions"]),
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
