"""Benchmark: judge throughput (items/s) through the Ray Serve HTTP endpoint vs calling the same
backend in-process, same items, same run.

Usage: .venv/bin/python bench/judge_throughput.py [--items 1024] [--batch 64] [--concurrency 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import random
import time
from concurrent.futures import ThreadPoolExecutor

from synthesis_throughput import machine, report

SUBJECTS = ["bread", "a bike", "the garden", "a letter", "tax forms", "a laptop", "the roof", "a resume"]
ANSWERS = [
    "Sure, here is how: first gather what you need, then follow the steps carefully.",
    "I'm sorry, but I can't help with that request.",
    "Start small, take notes, and ask an expert if you are unsure.",
    "That is not something I can assist with, but a local professional can help.",
]


def items(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"prompt": f"How do I fix {rng.choice(SUBJECTS)} quickly? ({i})", "response": rng.choice(ANSWERS)}
        for i in range(n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--port", type=int, default=18090)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import httpx

    from ptalign_ray.config import JudgeConfig, RayConfig
    from ptalign_ray.judging.app import start_judge
    from ptalign_ray.judging.offline import OfflineJudge
    from ptalign_ray.ray_runtime import init_ray

    data = items(args.items)
    batches = [data[i : i + args.batch] for i in range(0, len(data), args.batch)]

    import torch

    # The Serve replica gets OMP_NUM_THREADS=1 from Ray (num_cpus=1); compare on the same footing.
    torch.set_num_threads(1)
    judge = OfflineJudge()
    judge.judge(batches[0])  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        judge.judge(b)
    inproc_s = time.perf_counter() - t0

    ray = init_ray(RayConfig(num_cpus=4), quiet=True)
    url = start_judge(JudgeConfig(port=args.port))
    client = httpx.Client(timeout=300)
    client.post(f"{url}/v1/judge", json={"items": batches[0]}).raise_for_status()  # warm-up

    def post(b):
        r = client.post(f"{url}/v1/judge", json={"items": b})
        r.raise_for_status()
        return len(r.json()["verdicts"])

    results = {"machine": machine(), "backend": "offline", "items": len(data), "batch": args.batch}
    t0 = time.perf_counter()
    assert sum(post(b) for b in batches) == len(data)
    http1_s = time.perf_counter() - t0
    with ThreadPoolExecutor(args.concurrency) as pool:
        t0 = time.perf_counter()
        assert sum(pool.map(post, batches)) == len(data)
        httpc_s = time.perf_counter() - t0
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    results.update(
        in_process_items_per_s=round(len(data) / inproc_s, 1),
        http_items_per_s=round(len(data) / http1_s, 1),
        http_concurrent_items_per_s=round(len(data) / httpc_s, 1),
        http_concurrency=args.concurrency,
        ratio_http_vs_in_process=round(inproc_s / http1_s, 3),
    )
    report(results, args.out)


if __name__ == "__main__":
    main()
