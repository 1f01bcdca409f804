"""Training variants on the same refined data: what each ingredient of the default does.

Takes a finished run (synthesis + refinement done, e.g. `runs/seeds/seed-0`), copies its data stages
into one run directory per variant, trains PT-ALIGN there with the variant's training options and
evaluates it with the run's evaluation config (base and MLE-only come from the finished run itself).

    .venv/bin/python bench/variants.py --run runs/seeds/seed-0 --config runs/seeds/seed-0.yaml

Writes bench/results-variants.json and prints a Markdown table (greedy ASR and ASR@k on the harmful
sets, over-refusal on the benign sets, per evaluation judge). Numbers only. Several runs (seeds),
one results file each, merge into mean [min, max] per variant and paired differences from the
retrained default (variant `default`):

    .venv/bin/python bench/variants.py --merge results-*.json --out bench/results-variants-seeds.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ptalign_ray.config import merge_overrides

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

# name -> training overrides, each against the run's own config (the default)
VARIANTS = {
    "default": {},  # the default retrained with the current code, to compare variants against
    "no_recovery": {"recovery_fraction": 0.0},
    "more_everyday": {"mix": {"red_team": 0.25, "benign": 0.15, "everyday": 0.6}},
    "ut_on_openings": {"ut_skip_openings": False},
    "no_mix": {"mix": None},
    "ut_exempt": {"ut_exempt_common": 0.1},
    # LoRA dropout as the default had it before 7f909aa (docs/benchmarks.md: 1.26-1.50x slower steps on CPU)
    "lora_dropout_0.05": {"lora": {"dropout": 0.05}},
    "dpo": {"objective": "dpo"},  # the same pairs trained with DPO (training.dpo_beta) instead of the dual loss
    # DPO at a usual LoRA-DPO learning rate: at the dual loss's 2e-3 it over-optimises (held-out loss -> 0)
    "dpo_lr2e-4": {"objective": "dpo", "learning_rate": 2e-4},
    "dpo_lr6e-4": {"objective": "dpo", "learning_rate": 6e-4},  # between the two (geometric middle)
}


def run_variant(base_run: Path, cfg: dict, name: str, overrides: dict, out_root: Path) -> Path:
    run_dir = out_root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    for stage in ("synthesis", "refinement"):
        if not (run_dir / stage).exists():
            shutil.copytree(base_run / stage, run_dir / stage)
    training = {**overrides, "ablation_mle_only": False}
    vcfg = merge_overrides(cfg, {"training": training, "evaluation": {"models": ["ptalign"]}})
    cfg_path = out_root / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(vcfg, sort_keys=False))
    with (out_root / f"{name}.log").open("w") as fh:
        for cmd in ("train", "evaluate"):
            subprocess.run([str(ROOT / ".venv/bin/ptalign"), cmd, "--config", str(cfg_path), "--run-dir", str(run_dir)],
                           check=True, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    return run_dir


def rates(run_dir: Path, model: str) -> dict:
    """Greedy and sampled headline rates of one model, per judge and set."""
    results = json.loads((run_dir / "evaluation" / "report.json").read_text())
    out: dict = {}
    for judge, metrics in results["metrics_by_judge"].items():
        for set_name, entry in metrics["sets"].items():
            for part in (entry, entry.get("sampled") or {}):
                m = (part.get("models") or {}).get(model) or {}
                for key in ("attack_success_rate", "asr_at_k", "over_refusal_rate", "refusal_per_sample"):
                    if key in m and m[key].get("value") is not None:
                        out[f"{judge}.{set_name}.{key}"] = round(m[key]["value"], 4)
    return out


def merge(files: list[Path], out: Path) -> dict:
    """Several runs' results (one JSON per run and variant) -> mean [min, max] per variant and figure over
    the runs, and each variant's paired difference from the retrained default on the same run."""
    per_run: dict[str, dict[str, dict]] = {}
    for f in files:
        d = json.loads(f.read_text())
        per_run.setdefault(str((ROOT / d["run"]).resolve()), {}).update(d["rates"])  # relative to the repo root
    summary: dict[str, dict] = {}
    for table in per_run.values():
        for variant, rates_ in table.items():
            for key, value in rates_.items():
                cell = summary.setdefault(variant, {}).setdefault(key, {"values": [], "minus_default": []})
                cell["values"].append(value)
                if "default" in table and key in table["default"]:
                    cell["minus_default"].append(round(value - table["default"][key], 4))
    for cells in summary.values():
        for cell in cells.values():
            v, d = cell["values"], cell["minus_default"]
            cell.update(mean=round(sum(v) / len(v), 4), min=min(v), max=max(v), n=len(v))
            if d:
                cell["minus_default_mean"] = round(sum(d) / len(d), 4)
    result = {"runs": sorted(per_run), "per_run": per_run, "summary": summary}
    out.write_text(json.dumps(result, indent=1))
    return result


def print_summary(result: dict, judge: str) -> None:
    """A Markdown table of the headline figures under one evaluation judge: mean [min, max] in %."""
    summary = result["summary"]
    keys = sorted(k for k in set().union(*(c.keys() for c in summary.values())) if k.startswith(judge + "."))
    print(f"| figure ({judge} judge, {len(result['runs'])} runs) | " + " | ".join(summary) + " |")
    print("|---|" + "---|" * len(summary))
    for k in keys:
        cells = []
        for variant in summary:
            c = summary[variant].get(k)
            cells.append("-" if c is None else f"{100 * c['mean']:.1f} [{100 * c['min']:.0f}, {100 * c['max']:.0f}]")
        print(f"| {k.removeprefix(judge + '.')} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a finished run directory (the default config)")
    ap.add_argument("--config", type=Path, help="the config that run used")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results-variants.json")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--merge", type=Path, nargs="*", help="merge these results files (one per run) instead")
    ap.add_argument("--judge", default="classifier", help="the evaluation judge of the merged table")
    args = ap.parse_args()
    if args.merge:
        print_summary(merge(args.merge, args.out), args.judge)
        return 0
    from synthesis_throughput import machine

    cfg = yaml.safe_load(args.config.read_text())
    out_root = args.run.parent / f"{args.run.name}-variants"
    table = {"default (PT-ALIGN)": rates(args.run, "ptalign"), "MLE-only": rates(args.run, "mle_only"),
             "base": rates(args.run, "base")}  # fmt: skip
    seconds = {}
    for name in args.variants:
        t0 = time.perf_counter()
        table[name] = rates(run_variant(args.run, cfg, name, VARIANTS[name], out_root), "ptalign")
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"[variants] {name} done in {seconds[name]:.0f}s", flush=True)
    args.out.write_text(json.dumps({"run": str(args.run), "machine": machine(), "variants": VARIANTS,
                                    "seconds": seconds, "rates": table}, indent=1))  # fmt: skip
    keys = sorted(set().union(*table.values()))
    print("| figure | " + " | ".join(table) + " |\n|---|" + "---|" * len(table))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{100 * table[v][k]:.1f}%" if k in table[v] else "-" for v in table) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
