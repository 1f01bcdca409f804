"""Benchmark: the batch engine actor with vLLM's engine core in its own process against vLLM's AsyncLLM.

Why: an engine actor (:class:`ptalign_ray.engine.EngineActor`) ran vLLM's AsyncLLM, which on CPU
is three processes (the actor as client, the engine core, the worker) that contend for the cores;
``engine.in_process`` runs the engine core and its worker in the actor's process instead, stepped
by one thread (:class:`ptalign_ray.engine.SteppedLLM`). This measures both in the same run.

Each round starts one engine actor of the config per mode (in-process, then AsyncLLM; through Ray,
as every stage does) and times its start, then B prompts (~100 tokens, distinct) that each generate
exactly --max-tokens tokens (ignore_eos), once greedy (evaluation) and once with synthesis's
question sampling (top_p 0.95, repetition penalty: ptalign's CPU sampler). Reports the medians over
rounds and the ratios in-process / AsyncLLM.

Usage:  .venv/bin/python bench/engine_in_process.py [--rounds 2] [--batch 128] [--max-tokens 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time

from synthesis_throughput import load_model, machine, report


def one_round(cfg, model_path: str, in_process: bool, batch: int, samplings: dict) -> dict:
    import ray

    from ptalign_ray.engine import start_engine_actors, stop_engine_actors

    engine = cfg.engine.model_copy(update={"in_process": in_process})
    [actor], start_s = start_engine_actors(model_path, cfg.model, engine)
    out = {"engine_start_s": round(start_s, 2)}
    try:
        for name, params in samplings.items():
            prompts = [[1] + list(range(200 + i, 300 + i)) for i in range(batch)]
            t0 = time.perf_counter()
            got = ray.get(actor.generate.remote(prompts, [params] * batch))
            out[f"{name}_tok_per_s"] = round(sum(n for _, n in got) / (time.perf_counter() - t0), 1)
    finally:
        stop_engine_actors([actor])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--out", default=None, help="write the results as JSON here too")
    args = ap.parse_args()

    from ptalign_ray.ray_runtime import init_ray

    cfg, model_path, _ = load_model(args.config)
    init_ray(cfg.ray)
    fixed = {"max_tokens": args.max_tokens, "ignore_eos": True}
    samplings = {
        "greedy": {"temperature": 0.0} | fixed,
        "top_p": cfg.synthesis.question_sampling.to_vllm() | fixed,
    }
    runs: dict[str, list[dict]] = {"in_process": [], "async_llm": []}
    for r in range(args.rounds):
        for mode, in_process in (("in_process", True), ("async_llm", False)):
            runs[mode].append(one_round(cfg, model_path, in_process, args.batch, samplings))
            print(f"round {r} {mode:<10}: {runs[mode][-1]}", flush=True)
    keys = list(runs["in_process"][0])
    median = {m: {k: round(statistics.median(x[k] for x in rows), 2) for k in keys} for m, rows in runs.items()}
    report(
        {
            "machine": machine(),
            "config": args.config,
            "batch": args.batch,
            "max_tokens": args.max_tokens,
            "samplings": samplings,
            "rounds": runs,
            "median": median,
            "in_process_over_async_llm": {k: round(median["in_process"][k] / median["async_llm"][k], 2) for k in keys},
        },
        args.out,
    )


if __name__ == "__main__":
    main()
