"""Benchmark: the main job's wall time against its compute-bound estimate, from one finished run.

    estimate = generated tokens / engine steady-state tok/s + trained tokens / training tok/s

Both rates come from the same run: the engine's steady state is the best evaluation pass (820
prompts, the engine full: compute-bound), training's is the median logged window of its steps.
Prints the ratio wall / estimate (1.0 = the job runs at the speed of its engines) and synthesis's
effective tok/s against the steady state. Reads manifests only: no model, no Ray.

Usage:  .venv/bin/python bench/compute_bound.py --run-dir runs/default [--wall-s 1132] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _read(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


def estimate(run: Path) -> dict:
    syn, ref, ev = _read(run, "synthesis"), _read(run, "refinement"), _read(run, "evaluation")
    gen_tokens = {
        "synthesis": sum(s.get("generated_tokens", 0) for s in syn["steps"].values()),
        "refinement": int(ref.get("tokens", {}).get("generated", 0)),
        "evaluation": sum(g["generated_tokens"] for g in ev["generation"].values()),
    }
    steady = max(g["generated_tokens_per_s"] for g in ev["generation"].values())
    train = {}
    for stage in ("training", "training_mle_only"):
        if not (run / stage / "manifest.json").is_file():
            continue
        history = [
            json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines() if line.strip()
        ]
        windows = [h for h in history if "tokens_per_s" in h]
        rate = statistics.median(h["tokens_per_s"] for h in windows)
        tokens = sum(h["tokens"] for h in windows)
        train[stage] = {"tokens": tokens, "tokens_per_s": round(rate, 1), "compute_s": round(tokens / rate, 1),
                        "fit_s": _read(run, stage).get("wall_seconds")}  # fmt: skip
    gen_s = sum(gen_tokens.values()) / steady
    train_s = sum(t["compute_s"] for t in train.values())
    syn_work = syn["wall_seconds"]
    return {
        "generated_tokens": gen_tokens,
        "engine_steady_tok_per_s": steady,
        "generation_compute_s": round(gen_s, 1),
        "training": train,
        "training_compute_s": round(train_s, 1),
        "estimate_s": round(gen_s + train_s, 1),
        "synthesis_effective_tok_per_s": round(gen_tokens["synthesis"] / syn_work, 1),
        "synthesis_vs_steady": round(gen_tokens["synthesis"] / syn_work / steady, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/default")
    ap.add_argument("--wall-s", type=float, default=None, help="`ptalign run`'s wall time (default: sum of stages)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    run = Path(args.run_dir)
    res = estimate(run)
    stages = ("synthesis", "refinement", "training", "training_mle_only", "evaluation")
    wall = args.wall_s or sum(_read(run, s).get("wall_seconds", 0) for s in stages if (run / s).is_dir())
    res["wall_s"] = round(wall, 1)
    res["wall_over_estimate"] = round(wall / res["estimate_s"], 2)
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
