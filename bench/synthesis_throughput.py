"""Benchmark: generation throughput of the synthesis path (Ray Data -> long-lived vLLM engine actor,
ptalign_ray/generation.py) against a direct in-process `vllm.LLM` on the same prompts and sampling
parameters, in the same run.

Reports two ratios (Ray / direct, higher is better, 1.0 = no overhead):
  * end-to-end: wall time including engine start-up on both sides;
  * steady state: generation only. For Ray this is a pass over the prompts on the engine that a
    first one-row pass started (as every later step of a run finds it).

Usage:  .venv/bin/python bench/synthesis_throughput.py [--prompts 256] [--max-tokens 128] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.machine()}"


def report(results: dict, out: str | None) -> None:
    """Prints a benchmark's results as JSON and, when asked, writes them to a file too."""
    print(json.dumps(results, indent=2))
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=2)


def load_model(config: str):
    """(config, local model path, tokenizer) of a config file, the model resolved as a run does."""
    from ptalign_ray.chat_template import load_tokenizer
    from ptalign_ray.config import load_config
    from ptalign_ray.models import resolve_model

    cfg = load_config(config)
    model_path = resolve_model(cfg.model.name_or_path)
    return cfg, model_path, load_tokenizer(model_path)


def build_prompts(n: int):
    from ptalign_ray.seeds import load_seeds
    from ptalign_ray.synthesis.prompts import question_messages

    seeds = load_seeds("default")
    out = []
    for i in range(n):
        d = seeds.domains[i % len(seeds.domains)]
        out.append(question_messages(d.name, f"{d.description} (scenario {i})", seeds.questions_for(d.name), 5))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--out", default=None, help="write the results as JSON here too")
    args = ap.parse_args()

    from ptalign_ray.chat_template import render_ids
    from ptalign_ray.engine import direct_generate, direct_llm
    from ptalign_ray.generation import generate, release_engines, token_stats
    from ptalign_ray.ray_runtime import init_ray

    cfg, model_path, tok = load_model(args.config)
    messages = build_prompts(args.prompts)
    # min_tokens = max_tokens: both sides generate exactly the same number of tokens.
    params = {"temperature": 0.7, "top_p": 0.95, "max_tokens": args.max_tokens, "min_tokens": args.max_tokens}
    results: dict = {"machine": machine(), "model": cfg.model.name_or_path, "dtype": cfg.model.dtype,
                     "prompts": args.prompts, "max_tokens": args.max_tokens}  # fmt: skip

    # Ray Data + the long-lived engine actor: the synthesis code path.
    ray = init_ray(cfg.ray, quiet=True)
    rows = [{"i": i} for i in range(args.prompts)]

    def run_ray(data_rows, sampling):
        t0 = time.perf_counter()
        ds = generate(
            ray.data.from_items(data_rows), model_path, cfg.model, cfg.engine,
            messages_of=lambda r: messages[r["i"]], sampling_of=lambda r: sampling, keep=("i",),
        ).materialize()  # fmt: skip
        return time.perf_counter() - t0, token_stats(ds)

    startup_s, _ = run_ray([{"i": 0}], {"max_tokens": 1, "temperature": 0.0})
    ray_s, ray_stats = run_ray(rows, params)
    release_engines()
    ray.shutdown()

    # Direct in-process vllm.LLM with identical engine arguments and sampling parameters.
    t0 = time.perf_counter()
    llm = direct_llm(model_path, cfg.model, cfg.engine)
    init_s = time.perf_counter() - t0
    prompt_ids = [render_ids(tok, m) for m in messages]
    t0 = time.perf_counter()
    outs = direct_generate(llm, prompt_ids, [params] * len(prompt_ids))
    gen_s = time.perf_counter() - t0
    direct_tokens = sum(n for _, n in outs)

    ray_tokens = ray_stats["generated_tokens"]
    results.update(
        ray_data={"tokens": ray_tokens, "wall_s": round(ray_s, 1), "startup_s": round(startup_s, 1),
                  "tok_per_s_end_to_end": round(ray_tokens / (startup_s + ray_s), 1),
                  "tok_per_s_steady": round(ray_tokens / ray_s, 1)},
        direct_vllm={"tokens": direct_tokens, "init_s": round(init_s, 1), "generate_s": round(gen_s, 1),
                     "tok_per_s_end_to_end": round(direct_tokens / (init_s + gen_s), 1),
                     "tok_per_s_steady": round(direct_tokens / gen_s, 1)},
    )  # fmt: skip
    results["ratio_end_to_end"] = round(
        results["ray_data"]["tok_per_s_end_to_end"] / results["direct_vllm"]["tok_per_s_end_to_end"], 3
    )
    results["ratio_steady"] = round(
        results["ray_data"]["tok_per_s_steady"] / results["direct_vllm"]["tok_per_s_steady"], 3
    )
    report(results, args.out)


if __name__ == "__main__":
    main()
