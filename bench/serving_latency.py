"""Benchmark: chat-completion latency and throughput through Ray Serve (ptalign serve's app: HTTP ->
protection -> ingress -> ray.serve.llm LLMServer -> vLLM) against the same engine called in-process
(vLLM AsyncLLM with the same engine arguments), in the same run, on SmolLM2 with the LoRA adapter.

Both sides get the same chat prompts (benign questions) and generate exactly --max-tokens tokens per
request (min_tokens = max_tokens, greedy). Requests are issued by a fixed pool of --concurrency
workers (closed loop); per level: p50 / p95 latency, requests/s, generated tokens/s.
Targets: p50 overhead of Serve at concurrency 1 <= 20%; requests/s at concurrency 8 >= 3x
concurrency 1 (the engine batches concurrent requests).

The adapter: RUN/training/adapter of --run-dir when that training stage is finished (default
/tmp/run-train), else a LoRA adapter of the same shape as training's (r=16, all linear layers,
small random weights) built for the benchmark.

Usage:  .venv/bin/python bench/serving_latency.py [--mode lora|merged] [--max-tokens 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthesis_throughput import machine, report  # noqa: E402

QUESTIONS = [
    "How do I bake bread at home?", "What is a good way to learn to play the guitar?",
    "How can I keep my tomato plants healthy?", "What should I pack for a weekend hiking trip?",
    "How do I change a flat bicycle tyre?", "Can you explain how a rainbow forms?",
    "What are some tips for a job interview?", "How do I make a simple vegetable soup?",
    "How can I improve my sleep?", "What is the difference between weather and climate?",
    "How do I start a small herb garden on a balcony?", "How can I save money on groceries?",
]  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def closed_loop(call, n: int, concurrency: int) -> dict:
    """n requests from `concurrency` workers; call(i) -> generated tokens."""
    latencies: list[float] = []
    tokens = 0
    todo = iter(range(n))

    async def worker():
        nonlocal tokens
        for i in todo:
            t0 = time.perf_counter()
            n_tokens = await call(i)  # (not `tokens += await ...`: that reads `tokens` before awaiting)
            latencies.append(time.perf_counter() - t0)
            tokens += n_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency, "requests": n, "wall_s": round(wall, 2),
        "p50_s": round(statistics.median(latencies), 3), "p95_s": round(percentile(latencies, 0.95), 3),
        "mean_s": round(statistics.fmean(latencies), 3), "requests_per_s": round(n / wall, 3),
        "tokens_per_s": round(tokens / wall, 1), "tokens": tokens,
    }  # fmt: skip


def bench_adapter(run_dir: Path, model_path: str, model_name: str, work: Path) -> tuple[Path, str]:
    """The run directory to serve: a finished training run, else one holding a benchmark adapter."""
    from ptalign_ray.runs import RunDir, write_json_atomic

    if RunDir(run_dir).is_done("training") and (run_dir / "training" / "adapter").is_dir():
        return run_dir, f"trained adapter {run_dir / 'training' / 'adapter'}"
    run = RunDir(work)
    if not run.is_done("training"):
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from ptalign_ray.training.stage import merge_adapter

        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        peft = get_peft_model(
            base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
        )
        with torch.no_grad():  # small weights: same compute as a trained adapter, coherent output
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.02)
        with run.building("training") as tmp:
            peft.save_pretrained(tmp / "adapter")
            merge_adapter(model_path, tmp / "adapter", tmp / "merged")
            write_json_atomic(
                tmp / "manifest.json", {"stage": "training", "model": model_name, "model_path": model_path}
            )
    return work, "benchmark adapter (r=16, all-linear, random small weights; same shape as training's)"


async def serve_side(url: str, key: str, args, levels) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {key}"}

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=32)) as client:

        async def call(i: int) -> int:
            body = {"model": "ptalign", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                    "max_tokens": args.max_tokens, "min_tokens": args.max_tokens, "temperature": 0.0}  # fmt: skip
            r = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]

        await closed_loop(call, 2, 1)  # warm-up
        out = {}
        for c, n in levels:
            out[str(c)] = await closed_loop(call, n, c)
            print(f"[bench] ray serve c={c}: {out[str(c)]}", flush=True)
        return out


async def in_process_side(model_path: str, cfg, adapter: Path, rank: int, args, levels) -> dict:
    from ptalign_ray.chat_template import load_tokenizer, render_ids
    from ptalign_ray.engine import direct_async_generate, direct_async_llm, lora_request

    tok = load_tokenizer(model_path)
    prompts = [render_ids(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    t0 = time.perf_counter()
    if args.mode == "lora":
        llm = direct_async_llm(model_path, cfg.model, cfg.engine, lora_rank=rank)
        lora = lora_request(adapter, name="ptalign")
    else:
        llm = direct_async_llm(str(adapter.parent / "merged"), cfg.model, cfg.engine)
        lora = None
    params = {"temperature": 0.0, "max_tokens": args.max_tokens, "min_tokens": args.max_tokens}
    counter = iter(range(10**9))
    try:

        async def call(i: int) -> int:
            _, n = await direct_async_generate(llm, prompts[i % len(prompts)], params, f"bench-{next(counter)}", lora)
            return n

        await closed_loop(call, 2, 1)  # warm-up (and adapter load)
        init_s = time.perf_counter() - t0
        out = {}
        for c, n in levels:
            out[str(c)] = await closed_loop(call, n, c)
            print(f"[bench] in-process c={c}: {out[str(c)]}", flush=True)
        out["startup_s"] = round(init_s, 1)
        return out
    finally:
        llm.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["lora", "merged"], default="lora")
    ap.add_argument("--run-dir", default="/tmp/run-train", help="a finished training run to take the adapter from")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests-c1", type=int, default=8)
    ap.add_argument("--requests-c8", type=int, default=24)
    ap.add_argument("--port", type=int, default=18200)
    ap.add_argument("--out", default=None, help="write the results as JSON here too")
    args = ap.parse_args()

    import json

    from ray import serve

    from ptalign_ray.config import EMBEDDED_MODEL, parse_config
    from ptalign_ray.models import ptalign_home, resolve_model
    from ptalign_ray.ray_runtime import init_ray
    from ptalign_ray.serving.app import start_serving

    model_path = resolve_model(EMBEDDED_MODEL)
    run_dir, adapter_source = bench_adapter(
        Path(args.run_dir), model_path, EMBEDDED_MODEL, ptalign_home() / "bench-serving-run"
    )
    adapter = run_dir / "training" / "adapter"
    rank = int(json.loads((adapter / "adapter_config.json").read_text())["r"])
    cfg = parse_config(
        {
            "engine": {"max_num_seqs": 64},
            "serving": {"port": args.port, "mode": args.mode, "models": ["ptalign"], "judge": False,
                        "max_tokens_limit": max(args.max_tokens, 64), "request_timeout_s": 900},
            "ray": {"num_cpus": 4},
        }
    )  # fmt: skip
    levels = [(1, args.requests_c1), (8, args.requests_c8)]
    results: dict = {
        "machine": machine(), "model": EMBEDDED_MODEL, "dtype": cfg.model.dtype, "mode": args.mode,
        "adapter": adapter_source, "max_tokens": args.max_tokens, "load_average_start": os.getloadavg(),
    }  # fmt: skip

    # Ray Serve: the `ptalign serve` application (auth on, limits on), HTTP on loopback.
    ray = init_ray(cfg.ray, quiet=True)
    key = "bench-key"
    t0 = time.perf_counter()
    url, _ = start_serving(cfg, run_dir, api_key=key, log=lambda m: print(m, flush=True))
    serve_start = time.perf_counter() - t0
    results["ray_serve"] = asyncio.run(serve_side(url, key, args, levels))
    results["ray_serve"]["startup_s"] = round(serve_start, 1)
    serve.shutdown()
    ray.shutdown()

    # The same engine in-process.
    results["in_process"] = asyncio.run(in_process_side(model_path, cfg, adapter, rank, args, levels))
    results["load_average_end"] = os.getloadavg()

    s, d = results["ray_serve"], results["in_process"]
    results["p50_overhead_c1"] = round(s["1"]["p50_s"] / d["1"]["p50_s"] - 1, 3)
    results["p95_overhead_c1"] = round(s["1"]["p95_s"] / d["1"]["p95_s"] - 1, 3)
    results["throughput_ratio_c8_vs_c1_serve"] = round(s["8"]["requests_per_s"] / s["1"]["requests_per_s"], 2)
    results["throughput_ratio_c8_vs_c1_in_process"] = round(d["8"]["requests_per_s"] / d["1"]["requests_per_s"], 2)
    results["serve_vs_in_process_rps_c8"] = round(s["8"]["requests_per_s"] / d["8"]["requests_per_s"], 3)
    results["targets"] = {
        "p50_overhead_c1_le_0.20": results["p50_overhead_c1"] <= 0.20,
        "serve_throughput_c8_ge_3x_c1": results["throughput_ratio_c8_vs_c1_serve"] >= 3.0,
    }
    report(results, args.out)


if __name__ == "__main__":
    main()
