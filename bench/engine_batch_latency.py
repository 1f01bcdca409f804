"""Benchmark: how long one decode step of the run's engine takes at each batch size.

Why: synthesis runs three dependent passes (topics -> questions -> answers) whose batches are small
(10 topic prompts, ~80 question prompts on the default config), while the compute-bound estimate
(bench/compute_bound.py) prices every generated token at the engine's steady state (batch 128). A
pass's wall time is roughly (its longest answer in tokens) x (step time at its batch), so the
ratio of step time to batch size says how far a small pass can be from the steady state.

One engine actor of the config (the same `EngineActor` every stage uses, started through Ray) gets
a batch of B prompts (~100 prompt tokens each) that all generate exactly --max-tokens tokens
(ignore_eos) with synthesis's question sampling, for each B. Reports ms per decode step, tokens/s,
the engine start, and a least-squares fit  step_ms = fixed_ms + per_sequence_ms x B.

Usage:  .venv/bin/python bench/engine_batch_latency.py [--batches 1 10 32 64 128] [--max-tokens 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import time

from synthesis_throughput import load_model, machine, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 10, 32, 64, 128])
    ap.add_argument("--max-tokens", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2, help="passes per batch size; the fastest is kept")
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--out", default=None, help="write the results as JSON here too")
    args = ap.parse_args()

    import ray

    from ptalign_ray.engine import start_engine_actors, stop_engine_actors
    from ptalign_ray.ray_runtime import init_ray

    cfg, model_path, _ = load_model(args.config)
    init_ray(cfg.ray)
    sampling = cfg.synthesis.question_sampling.to_vllm() | {"max_tokens": args.max_tokens, "ignore_eos": True}
    [actor], start_s = start_engine_actors(model_path, cfg.model, cfg.engine)
    rows = []
    try:
        for b in args.batches:
            prompts = [[1] + list(range(200 + i, 300 + i)) for i in range(b)]  # distinct: no prefix-cache hits
            best = None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                got = ray.get(actor.generate.remote(prompts, [sampling] * b))
                seconds = time.perf_counter() - t0
                best = seconds if best is None else min(best, seconds)
            tokens = sum(n for _, n in got)
            rows.append({"batch": b, "tokens": tokens, "seconds": round(best, 2),
                         "ms_per_step": round(1000 * best / args.max_tokens, 1),
                         "tok_per_s": round(tokens / best, 1)})  # fmt: skip
            print(
                f"batch {b:>4}: {rows[-1]['ms_per_step']:7.1f} ms/step, {rows[-1]['tok_per_s']:7.1f} tok/s", flush=True
            )
    finally:
        stop_engine_actors([actor])
    xs, ys = [r["batch"] for r in rows], [r["ms_per_step"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-9)
    steady = max(r["tok_per_s"] for r in rows)
    report(
        {
            "machine": machine(),
            "config": args.config,
            "sampling": sampling,
            "engine_start_s": round(start_s, 1),
            "batches": rows,
            "fit": {"fixed_ms": round(my - slope * mx, 1), "per_sequence_ms": round(slope, 2)},
            "share_of_best_rate": {str(r["batch"]): round(r["tok_per_s"] / steady, 2) for r in rows},
        },
        args.out,
    )


if __name__ == "__main__":
    main()
