"""How cost grows with the work (issue #14, item 6): wall time and peak memory of synthesis,
refinement and training at 1x, 4x and 16x the tiny pipeline's question count.

    nice -n 5 .venv/bin/python bench/scaling.py --sizes 1,4,16 --timeout 1800 [--base default]

``--base default`` (the figures in the README): configs/default.yaml's sizes, sampling and training
on the tiny test model, so 1x is the main job's question count and 16x sixteen times it.

The tests' tiny whole-pipeline config (tests/pipeline_config.py) on the tiny test model, with
PT-ALIGN training only (``training.ablation_mle_only: false``) and, as in bench/chaos_kill.py, two
refinement rounds of four candidates so that the random model leaves rows to train on. Size k
multiplies every question-writing prompt by k: ``synthesis.topic_samples`` and
``synthesis.max_topics_per_domain`` (k brainstorms per domain, k topics kept: k red-team and k
benign question prompts per domain) and ``synthesis.everyday_samples`` (k everyday prompts per
subject). ``questions_per_topic`` would not do: the tiny model writes 3-5 list items whatever it is
asked for. The counts that really came out are read from the manifests and reported.

Each size gets a fresh run directory; its stages run as separate `python -m ptalign_ray synthesize`,
`refine` and `train` processes (each starts its own local Ray, engines, judge, Ray Train workers).
Per stage: wall seconds of the process (start to exit), the manifest's own wall seconds and time
budget, the counts, and peak memory: the largest, over samples every --interval seconds, of the
summed RSS of the stage's process tree (the driver, Ray's GCS, raylet and workers, vLLM's engine
processes, Ray Train's workers) plus any process outside that tree whose command line names one
of the tree's Ray sessions. RSS counts a page shared by several processes (libraries, Ray's
object store in /dev/shm) once per process, so the sum over-counts; the summed PSS (shared pages
split between their users, sampled every fourth time) is recorded next to it.

Writes bench/results-scaling.json (after every stage, so a stopped run leaves what it measured) and
bench/results-scaling.png, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import psutil  # noqa: E402

# (command, stage folder) in pipeline order; evaluation is not measured
STAGES = (("synthesize", "synthesis"), ("refine", "refinement"), ("train", "training"))
MORE_DATA = {"refinement": {"rounds": 2, "candidates": 4}, "training": {"ablation_mle_only": False}}
GIB = 2**30
# each stage's own unit of work (a count in its manifest), for a second fit
OWN_UNIT = {"synthesis": "questions_parsed", "refinement": "triplets_in", "training": "samples_seen"}


def scaled_config(model_dir: Path, k: int, judge_port: int, base: str = "tiny") -> dict:
    """A config with every question-writing prompt multiplied by k.

    ``base`` "tiny": the tests' tiny whole-pipeline config; "default": configs/default.yaml's sizes,
    sampling and training (the main job's question count at 1x) on the tiny model, with the question
    judge's bar lowered as in the tests (the random model writes no harmful questions) and only the
    PT-ALIGN training."""
    import yaml
    from pipeline_config import tiny_pipeline_config

    tiny = tiny_pipeline_config(model_dir)
    if base == "default":
        cfg = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
        cfg["model"] = tiny["model"]
        cfg["engine"]["cpu_kvcache_space_gib"] = tiny["engine"]["cpu_kvcache_space_gib"]
        cfg["synthesis"]["min_question_harm_prob"] = tiny["synthesis"]["min_question_harm_prob"]
        cfg["training"]["ablation_mle_only"] = False
        cfg.setdefault("judge", {})
    else:
        cfg = tiny
        for section, values in MORE_DATA.items():
            cfg[section].update(values)
    cfg["judge"]["port"] = judge_port
    syn = cfg["synthesis"]
    syn["topic_samples"] = syn["topic_samples"] * k
    syn["max_topics_per_domain"] = syn["max_topics_per_domain"] * k
    syn["everyday_samples"] = syn.get("everyday_samples", 1) * k
    return cfg


def run_env() -> dict:
    """This checkout's code, offline, a fresh local Ray per process (as bench/chaos_kill.py)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    env.setdefault("PTALIGN_HOME", str(ROOT / ".cache" / "ptalign-home"))
    return env


# -- memory of a process tree ---------------------------------------------------------------------
class TreeMemory(threading.Thread):
    """Samples the summed RSS (and, every `pss_every`-th sample, PSS) of a process tree and of the
    processes of its Ray sessions outside the tree; keeps the peaks and what made them up."""

    def __init__(self, root_pid: int, interval: float, pss_every: int = 4):
        super().__init__(daemon=True)
        self.root = psutil.Process(root_pid)
        self.interval, self.pss_every = interval, pss_every
        self._stop_event = threading.Event()
        self.sessions: set[str] = set()
        self._seen: dict[int, bool] = {}  # pid -> belongs to one of the sessions (decided once sessions are known)
        self.members: dict[int, float] = {}  # pid -> create time of every process seen in the tree
        self.samples = 0
        self.peak_rss = self.peak_pss = 0
        self.peak_rss_t = self.peak_pss_t = 0.0
        self.peak_rss_top: list = []
        self.max_processes = 0
        self.outside_tree: set[int] = set()
        self.cpu_s = 0.0  # this thread's own CPU time
        self.t0 = time.monotonic()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while True:
            self.sample()
            if self._stop_event.wait(self.interval):
                break

    def _procs(self) -> list[psutil.Process]:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        mine = {p.pid for p in tree}
        for p in tree:
            if p.pid not in self.members:
                try:
                    self.members[p.pid] = p.create_time()
                except psutil.Error:
                    pass
            # read until the sessions are known (a process sampled between fork and exec shows its parent's)
            if self.sessions and p.pid in self._seen:
                continue
            try:
                cmd = p.cmdline()
            except psutil.Error:
                continue
            self.sessions.update(a.split("=", 1)[1] for a in cmd if a.startswith("--session-name="))
            if self.sessions:
                self._seen[p.pid] = True
        if self.sessions:  # processes of the same Ray sessions that are not (or no longer) in the tree
            for pid in psutil.pids():
                if pid in mine:
                    continue
                if pid not in self._seen:
                    try:
                        cmd = " ".join(psutil.Process(pid).cmdline())
                    except psutil.Error:
                        cmd = ""
                    self._seen[pid] = any(s in cmd for s in self.sessions)
                if self._seen[pid]:
                    try:
                        tree.append(psutil.Process(pid))
                        self.outside_tree.add(pid)
                    except psutil.NoSuchProcess:
                        pass
        return tree

    def sample(self) -> None:
        c0 = time.thread_time()
        procs = self._procs()
        with_pss = self.samples % self.pss_every == 0
        rss = pss = 0
        parts = []
        for p in procs:
            try:
                r = p.memory_info().rss
                if with_pss:
                    pss += p.memory_full_info().pss
                rss += r
                parts.append((r, p))
            except psutil.Error:
                pass
        t = round(time.monotonic() - self.t0, 1)
        self.samples += 1
        self.max_processes = max(self.max_processes, len(procs))
        if rss > self.peak_rss:
            self.peak_rss, self.peak_rss_t = rss, t
            self.peak_rss_top = [(r, p) for r, p in sorted(parts, key=lambda x: -x[0])[:8]]
        if with_pss and pss > self.peak_pss:
            self.peak_pss, self.peak_pss_t = pss, t
        self.cpu_s += time.thread_time() - c0

    def summary(self) -> dict:
        top = []
        for r, p in self.peak_rss_top:
            try:
                name = (p.cmdline() or [p.name()])[0]
            except psutil.Error:
                name = "(exited)"
            top.append({"process": Path(name).name[:60], "rss_gib": round(r / GIB, 3)})
        return {
            "peak_rss_sum_gib": round(self.peak_rss / GIB, 3), "peak_rss_at_s": self.peak_rss_t,
            "peak_pss_sum_gib": round(self.peak_pss / GIB, 3), "peak_pss_at_s": self.peak_pss_t,
            "largest_processes_at_rss_peak": top, "samples": self.samples, "max_processes": self.max_processes,
            "processes_outside_tree": len(self.outside_tree), "ray_sessions": sorted(self.sessions),
            "sampler_cpu_s": round(self.cpu_s, 2),
        }  # fmt: skip


def kill_tree(pid: int, mem: TreeMemory) -> int:
    """Stops, then SIGKILLs a stage's process tree and every other process of it that is still alive,
    by pid (never `ray stop`: other Ray clusters run on the machine). Returns how many were killed."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    procs += [p for p in leftovers(mem) if p.pid not in {q.pid for q in procs}]
    for p in procs:
        try:
            p.suspend()
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return len(procs)


def leftovers(mem: TreeMemory) -> list[psutil.Process]:
    """Live processes of a stage: seen in its tree (same pid and start time), or naming its Ray sessions."""
    out = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            ours = mem.members.get(p.pid) == p.info["create_time"] or any(s in cmd for s in mem.sessions)
            if ours and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


# -- one stage ------------------------------------------------------------------------------------
def run_stage(command: str, config: Path, run_dir: Path, log_path: Path, timeout: float, interval: float,
              stop_file: Optional[Path]) -> dict:  # fmt: skip
    cmd = [sys.executable, "-m", "ptalign_ray", command, "--config", str(config), "--run-dir", str(run_dir)]
    load0 = os.getloadavg()
    with open(log_path, "w") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=run_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        mem = TreeMemory(proc.pid, interval)
        mem.start()
        why = None
        while proc.poll() is None:
            if time.monotonic() - t0 > timeout:
                why = f"timeout after {timeout:.0f}s"
            elif stop_file and stop_file.exists():
                why = f"stopped: {stop_file} exists"
            if why:
                mem.stop()
                kill_tree(proc.pid, mem)
                break
            time.sleep(0.2)
        rc = proc.wait()
        wall = time.monotonic() - t0
    mem.stop()
    mem.join()
    # Ray's processes should exit with the driver; any left would run on into the next stage
    time.sleep(2)
    left = leftovers(mem)
    if left:
        time.sleep(10)
        left = leftovers(mem)
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
    return {
        "command": " ".join(["python -m ptalign_ray", *cmd[3:]]), "rc": rc, "failure": why, "wall_s": round(wall, 1),
        "load_avg_1m_start_end": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
        "memory": mem.summary(), "ray_processes_left_after_exit": len(left), "log": str(log_path),
    }  # fmt: skip


def manifest_facts(run_dir: Path, stage: str) -> dict:
    """Counts, the manifest's own wall seconds and time budget."""
    path = run_dir / stage / "manifest.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    out = {"manifest_wall_s": m.get("wall_seconds"), "time_budget": m.get("time_budget")}
    if isinstance(m.get("wall_seconds"), (int, float)):  # process and Ray start-up, model resolution, shutdown
        out["outside_manifest_s"] = None  # filled in by the caller, which knows the process's wall time
    if stage == "synthesis":
        st = m["steps"]
        out["counts"] = {
            **m["counts"], "topics_parsed": st["topics"]["topics_parsed"], "question_prompts": st["questions"]["rows"],
            "questions_parsed": st["questions"]["questions_parsed"],
            "near_duplicates_dropped": st["questions"]["near_duplicates_dropped"],
            "questions_after_dedup": st["screening"]["questions"], "generated_tokens": m["tokens"]["generated"],
        }  # fmt: skip
    elif stage == "refinement":
        q = m["quality"]
        out["counts"] = {
            "triplets_in": q["questions"], "triplets_kept": q["kept"], "triplets_dropped": q["dropped"],
            "benign_in": q.get("benign", {}).get("total"), "benign_kept": q.get("benign", {}).get("kept"),
            "generated_tokens": m["tokens"]["generated"],
        }  # fmt: skip
    else:
        d = m["data"]
        out["counts"] = {
            "train_pairs": d["train_pairs"], "holdout_pairs": d["holdout_pairs"], "train_benign": d["train_benign"],
            "holdout_benign": d["holdout_benign"], "tokens": d.get("tokens"), "steps": m["steps"],
            "samples_seen": m["samples_seen"],
        }  # fmt: skip
    return out


# -- analysis -------------------------------------------------------------------------------------
def questions_of(size: dict) -> Optional[int]:
    """The red-team questions synthesis kept (what refinement and training consume)."""
    return size["stages"].get("synthesis", {}).get("counts", {}).get("questions")


def fit(n: list, t: list) -> dict:
    """Least squares t = a + b * n: a is the fixed part (process, Ray and engine start), b the cost per unit."""
    import numpy as np

    b, a = np.polyfit(np.array(n, dtype=float), np.array(t, dtype=float), 1)
    residual = np.array(t) - (a + b * np.array(n, dtype=float))
    return {"a_fixed_s": round(float(a), 1), "b_s_per_unit": round(float(b), 4),
            "max_abs_residual_s": round(float(np.max(np.abs(residual))), 1), "points": len(n)}  # fmt: skip


def analyse(sizes: list[dict]) -> dict:
    """Per stage: ratio to linear against the smallest size, and a least-squares t = a + b * n."""
    out = {}
    ok = [s for s in sizes if questions_of(s)]
    if not ok:
        return out
    base = min(ok, key=lambda s: s["k"])
    for _, stage in STAGES:
        rows = [(s["k"], questions_of(s), s["stages"][stage]) for s in ok
                if s["stages"].get(stage, {}).get("rc") == 0]  # fmt: skip
        if not rows or rows[0][0] != base["k"]:
            continue
        k1, n1, r1 = rows[0]
        t1 = r1["wall_s"]
        per = []
        for k, n, r in rows:
            per.append({
                "k": k, "questions": n, "wall_s": r["wall_s"],
                "ratio_to_linear": round(r["wall_s"] / ((k / k1) * t1), 3),
                "ratio_to_linear_measured_questions": round(r["wall_s"] / ((n / n1) * t1), 3),
                "peak_rss_sum_gib": r["memory"]["peak_rss_sum_gib"],
                "peak_pss_sum_gib": r["memory"]["peak_pss_sum_gib"],
            })  # fmt: skip
        # growth beyond the fixed costs: the cost of each added question between consecutive sizes,
        # against the same between the first two (1.0 = linear plus a fixed part, > 1 = superlinear)
        for prev, cur in zip(per[1:], per[2:]):
            first = (per[1]["wall_s"] - per[0]["wall_s"]) / max(per[1]["questions"] - per[0]["questions"], 1)
            step = (cur["wall_s"] - prev["wall_s"]) / max(cur["questions"] - prev["questions"], 1)
            cur["marginal_cost_ratio"] = round(step / first, 3) if first > 0 else None
        res = {"by_size": per}
        if len(rows) >= 2:
            t = [x[2]["wall_s"] for x in rows]
            res["fit_wall_s_vs_questions"] = fit([x[1] for x in rows], t)
            unit = OWN_UNIT[stage]
            own = [x[2].get("counts", {}).get(unit) for x in rows]
            if all(isinstance(v, int) for v in own):
                res["fit_wall_s_vs_own_work"] = {"unit": unit, "values": own, **fit(own, t)}
        out[stage] = res
    return out


def markdown_table(sizes: list[dict], analysis: dict) -> str:
    def cell(stage: str, k: int, key: str, fmt: str) -> str:
        for row in analysis.get(stage, {}).get("by_size", []):
            if row["k"] == k:
                return format(row[key], fmt)
        return "-"

    head = ("| size | questions (parsed / red-team kept) | synthesize s (x linear) | refine s (x linear) | "
            "train s (x linear) | peak GiB, RSS sum: syn / ref / train |")  # fmt: skip
    lines = [head, "|" + "---|" * 6]
    for s in sizes:
        k, syn = s["k"], s["stages"].get("synthesis", {}).get("counts", {})
        times = []
        for _, stage in STAGES:
            r = s["stages"].get(stage)
            if not r:
                times.append("-")
            elif r["rc"] != 0:
                times.append(f"failed (rc {r['rc']})")
            else:
                times.append(f"{r['wall_s']:.0f} ({cell(stage, k, 'ratio_to_linear', '.2f')})")
        peaks = " / ".join(f"{s['stages'][st]['memory']['peak_rss_sum_gib']:.1f}" if st in s["stages"] else "-"
                           for _, st in STAGES)  # fmt: skip
        qs = f"{syn.get('questions_parsed', '-')} / {syn.get('questions', '-')}"
        lines.append(f"| {k}x | {qs} | " + " | ".join(times) + f" | {peaks} |")
    return "\n".join(lines)


def plot(sizes: list[dict], analysis: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"synthesis": "tab:blue", "refinement": "tab:orange", "training": "tab:green"}
    for stage, res in analysis.items():
        rows = res["by_size"]
        n = [r["questions"] for r in rows]
        c = colors[stage]
        ax_t.plot(n, [r["wall_s"] for r in rows], "o-", color=c, label=stage)
        ax_t.plot([0, max(n)], [0, rows[0]["wall_s"] * max(n) / n[0]], "--", color=c, lw=0.8, alpha=0.7)
        line = res.get("fit_wall_s_vs_questions")
        if line:
            ax_t.plot([0, max(n)], [line["a_fixed_s"], line["a_fixed_s"] + line["b_s_per_unit"] * max(n)], ":",
                      color=c, lw=0.8)  # fmt: skip
        ax_m.plot(n, [r["peak_rss_sum_gib"] for r in rows], "o-", color=c, label=f"{stage} (RSS sum)")
        ax_m.plot(n, [r["peak_pss_sum_gib"] for r in rows], "s--", color=c, alpha=0.6, label=f"{stage} (PSS sum)")
    ax_t.set(xlabel="red-team questions kept by synthesis", ylabel="stage wall time (s)",
             title="wall time (dashed: linear through 1x; dotted: a + b n)")  # fmt: skip
    ax_m.set(xlabel="red-team questions kept by synthesis", ylabel="peak memory (GiB)", title="peak memory")
    ax_m.set_ylim(bottom=0)
    ax_t.set_xlim(left=0)
    top = max((r["wall_s"] for res in analysis.values() for r in res["by_size"]), default=1)
    ax_t.set_ylim(0, 1.3 * top)  # the linear reference runs off the top where fixed costs dominate
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / GIB, 1), "python": platform.python_version(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()], "nice": os.nice(0)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,4,16", help="multiples of the base config's question prompts")
    p.add_argument(
        "--base",
        choices=("tiny", "default"),
        default="tiny",
        help="tiny: the tests' whole-pipeline config; default: configs/default.yaml's sizes on the tiny model",
    )
    p.add_argument("--workdir", type=Path, default=Path("/tmp/ptalign-scaling"), help="configs, run dirs, logs")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one stage may take")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    p.add_argument("--stop-file", type=Path, default=None, help="stop (kill the running stage) once this exists")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results-scaling.json")
    p.add_argument("--plot", type=Path, default=ROOT / "bench" / "results-scaling.png")
    args = p.parse_args()
    import yaml
    from pipeline_config import free_port
    from tiny_model import tiny_model_dir

    ks = [int(x) for x in args.sizes.split(",")]
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = tiny_model_dir(Path(run_env()["PTALIGN_HOME"]))
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    out = {
        "issue": "14 item 6",
        "command": " ".join(["bench/scaling.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": git.stdout.strip(),
        "machine": machine(),
        "setup": {
            "config": "tests/pipeline_config.tiny_pipeline_config on tests/tiny_model.py"
            if args.base == "tiny"
            else "configs/default.yaml's sizes on tests/tiny_model.py (model, KV cache and question-judge bar "
            "from the tiny config; training.ablation_mle_only false)",
            "overrides": MORE_DATA if args.base == "tiny" else None,
            "size_knob": "k x synthesis.topic_samples, k x synthesis.max_topics_per_domain, "
            "k x synthesis.everyday_samples",
            "stages": "separate `python -m ptalign_ray synthesize|refine|train` processes, fresh run dir per size",
            "wall_s": "the stage process, start to exit (Python and Ray start-up included)",
            "memory": "peak over samples every --interval s of the summed RSS of the stage's process tree (driver, "
            "GCS, raylet, Ray workers, vLLM engine processes, Ray Train workers) and of processes outside "
            "the tree naming the tree's Ray sessions; pages shared between processes (libraries, the object "
            "store in /dev/shm) count once per process, so RSS sums over-count; PSS sums (shared pages "
            "split) sampled every 4th time",
            "ratio_to_linear": "t(k) / ((k / k_min) * t(k_min)); *_measured_questions uses the measured question "
            "ratio instead of k",
            "marginal_cost_ratio": "seconds per added red-team question between this size and the previous one, "
            "over the same between the first two sizes: 1.0 = linear plus a fixed part, > 1 = superlinear",
        },  # fmt: skip
        "sizes": [],
    }
    print(f"[scaling] sizes {ks}, work in {args.workdir}, model {model_dir.name}", flush=True)

    def save() -> None:
        out["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        out["analysis"] = analyse(out["sizes"])
        out["table_md"] = markdown_table(out["sizes"], out["analysis"])
        args.out.write_text(json.dumps(out, indent=2) + "\n")

    stopped = False
    for k in ks:
        run_dir = args.workdir / f"run-{k}x"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        config = args.workdir / f"tiny-{k}x.yaml"
        cfg = scaled_config(model_dir, k, free_port(), args.base)
        config.write_text(yaml.safe_dump(cfg))
        size = {"k": k, "synthesis_knobs": {key: cfg["synthesis"][key] for key in
                ("topic_samples", "max_topics_per_domain", "everyday_samples")}, "stages": {}}  # fmt: skip
        out["sizes"].append(size)
        for command, stage in STAGES:
            r = run_stage(command, config, run_dir, args.workdir / f"{k}x-{command}.log", args.timeout, args.interval,
                          args.stop_file)  # fmt: skip
            r.update(manifest_facts(run_dir, stage) if r["rc"] == 0 else {})
            if "outside_manifest_s" in r:
                r["outside_manifest_s"] = round(r["wall_s"] - r["manifest_wall_s"], 1)
            size["stages"][stage] = r
            save()
            c = r.get("counts", {})
            m = r["memory"]
            print(f"[scaling] {k:>2}x {command:<10} rc {r['rc']} {r['wall_s']:7.1f}s "
                  f"(manifest {r.get('manifest_wall_s')}s)"
                  f" peak RSS sum {m['peak_rss_sum_gib']:.2f} GiB, PSS sum {m['peak_pss_sum_gib']:.2f} "
                  f"GiB, {r['memory']['max_processes']} processes; {c}", flush=True)  # fmt: skip
            if r["failure"] and r["failure"].startswith("stopped"):
                stopped = True
            if r["rc"] != 0:
                break
        if stopped:
            break
    save()
    if out["analysis"]:
        plot(out["sizes"], out["analysis"], args.plot)
    print()
    print(out["table_md"])
    for stage, res in out["analysis"].items():
        print(f"[scaling] {stage}: fit {res.get('fit_wall_s_vs_questions')}, ratios "
              f"{[r['ratio_to_linear'] for r in res['by_size']]}")  # fmt: skip
    print(f"[scaling] wrote {args.out} and {args.plot}")
    return 0 if all(r["rc"] == 0 for s in out["sizes"] for r in s["stages"].values()) and not stopped else 1


if __name__ == "__main__":
    sys.exit(main())
