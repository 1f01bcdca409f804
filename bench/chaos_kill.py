"""Crash anywhere (issue #13): SIGKILL `ptalign run` on the tiny model at random points of every
stage, rerun it on the same run directory each time, and check the directory it finally leaves.

Why: the run directory promises that a crash at any instant leaves a stage whole or absent,
checkpoints that are whole or recomputed and a lock the OS drops. The unit tests check this on a
writer loop; this checks it on the real pipeline (Ray Data, vLLM, Serve, Ray Train) killed for real.

    nice -n 15 .venv/bin/python bench/chaos_kill.py --kills 10 --seed 0

1. An uninterrupted reference run gives each stage's duration and the Parquet schemas.
2. Kill k targets stage ``STAGES[k * 5 // N]`` (two kills per stage for N=10) and fires after a
   delay drawn uniformly over that stage's reference duration, counted from the stage's start in
   this attempt (if the stage ends first, the kill hits a later one; which stage was hit is read
   from the run directory). Every process of the run - the driver, Ray's GCS and raylet, Ray's
   workers (each in its own process group), vLLM's engine processes - is frozen, then killed: none
   may survive, and the next attempt must start a Ray session of its own.
3. Each kill is followed by a rerun of the same command: it must report the stages finished before
   the kill as finished, and it is the next kill's attempt; the last attempt runs to the end.
4. The finished directory is checked (check_run_dir), and one more `ptalign run` must find every
   stage finished (the project's own config-hash and upstream-digest checks).

Writes bench/results-chaos-kill.json. Prints only the bench's own lines, never the run's data.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import psutil  # noqa: E402

from ptalign_ray.artifacts import BENIGN_COLUMNS, TRIPLET_COLUMNS, VARIANTS, upstream_key  # noqa: E402
from ptalign_ray.runs import LOCK, MANIFEST, WORK, RunDir, file_sha256, read_json  # noqa: E402
from ptalign_ray.training.data import REQUIRED_COLUMNS  # noqa: E402

STAGES = ("synthesis", "refinement", "training", "training_mle_only", "evaluation")
# console lines that say a stage has started in this attempt (training_mle_only: its first own line)
MARKERS = {
    "[run] stage synthesize": "synthesis",
    "[run] stage refine": "refinement",
    "[run] stage train": "training",
    "[training_mle_only]": "training_mle_only",
    "[run] stage evaluate": "evaluation",
}
# per stage: its Parquet files and the columns that identify a row (no two rows may share them)
ROW_KEYS = {
    "synthesis": {"data/triplets.parquet": ["id"], "benign/benign.parquet": ["id"]},
    "refinement": {"data/triplets.parquet": ["id"], "benign/benign.parquet": ["id"], "dropped.parquet": ["id"]},
    "evaluation": {"data/generations.parquet": ["model", "rid"]},
}
# columns a stage's readers rely on (without a reference run): synthesis writes exactly the contract's
# lists, training reads these from refinement's triplets
EXPECTED_COLUMNS = {
    "synthesis/data/triplets.parquet": TRIPLET_COLUMNS,
    "synthesis/benign/benign.parquet": BENIGN_COLUMNS,
    "refinement/data/triplets.parquet": REQUIRED_COLUMNS,
}


# -- starting and killing `ptalign run` ---------------------------------------------------------
# The tiny model writes a positive the judge accepts about one time in four and refinement fixes a
# failing one with ~15% per candidate: with the tests' one round of one candidate, the 4-6 red-team
# samples often keep none and the run stops at training (no rows to train on: rc 2, by design). Two
# rounds of four candidates (the default is 3 x 3) make that rare, for a bench that must reach every
# stage; they add seconds (16-token candidates).
MORE_DATA = {"refinement": {"rounds": 2, "candidates": 4}}


def write_config(path: Path, model_dir: Path, judge_port: int, overrides: Optional[dict] = None) -> Path:
    """The tests' tiny whole-pipeline config with a fixed judge port (every attempt uses the same)."""
    import yaml
    from pipeline_config import tiny_pipeline_config

    cfg = tiny_pipeline_config(model_dir)
    cfg["judge"]["port"] = judge_port
    for section, values in (overrides or {}).items():
        cfg[section].update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_env() -> dict:
    """This checkout's code, offline, a fresh local Ray (no RAY_ADDRESS: init_ray starts its own
    with address='local', so an attempt never joins what a killed one left)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("RAY_ADDRESS", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    env.setdefault("PTALIGN_HOME", str(ROOT / ".cache" / "ptalign-home"))
    return env


def ctrl_c_as_in_a_terminal() -> None:
    """``preexec_fn`` of a child that will be sent Ctrl-C (SIGINT): the signal's default action back.
    A shell without job control (a script's ``cmd &``, ``nohup cmd &``) starts a background job with
    SIGINT ignored, and every child inherits that; Python then never raises KeyboardInterrupt and the
    child would run on as if the Ctrl-C had not been sent."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Attempt:
    """One `ptalign run` (or another stage ``command``) in its own session; its console goes to a log
    file, stage starts are timed."""

    def __init__(self, config: Path, run_dir: Path, log_path: Path, command: str = "run"):
        self.t0 = time.monotonic()
        self.stages = stages_of(config)
        self.started: dict[str, float] = {}  # stage -> seconds after start when it began
        self.already: list[str] = []  # stages this attempt found finished
        self.resumed: set[str] = set()  # "stage/step" of this attempt's steps taken from their checkpoint
        self.last_line = ""
        cmd = [sys.executable, "-m", "ptalign_ray", command, "--config", str(config), "--run-dir", str(run_dir)]
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            cmd, env=run_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, preexec_fn=ctrl_c_as_in_a_terminal,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        section = ""  # the stage the current console line belongs to
        for line in self.proc.stdout:
            self._log.write(line)
            self._log.flush()
            line = line.strip()
            for marker, stage in MARKERS.items():
                if line.startswith(marker) and stage not in self.started:
                    self.started[stage] = self.elapsed()
            if " already finished" in line:
                self.already.append(line.split("]")[0].lstrip("["))
            if line.startswith("== "):  # a stage's summary: "== synthesis summary ==", "== training summary (..."
                section = line[3:].split()[0]
            elif line.startswith("["):
                section = line[1:].split("]")[0]
            # a summary of a stage found finished repeats the resumptions of the run that made it
            if "resumed" in line and section not in self.already:
                step = line.split("]", 1)[-1] if line.startswith("[") else line
                self.resumed.add(f"{section}/{step.split(':')[0].strip()}")
            if line:
                self.last_line = line[:160]

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def wait_for_stage(self, stage: str, timeout: float) -> bool:
        """True once the stage has started; False if the run ended first."""
        deadline = time.monotonic() + timeout
        while stage not in self.started:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def sleep_unless_done(self, seconds: float) -> bool:
        """Sleeps; False if the run ended meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return self.proc.poll() is None

    def kill(self) -> dict:
        info = kill_tree(self.proc.pid)
        self.proc.wait()
        self.close()
        return info

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = -999
        self.close()
        return rc

    def close(self) -> None:
        self._reader.join(timeout=30)
        self._log.close()


def kill_tree(pid: int, whole_sessions: bool = True) -> dict:
    """SIGKILLs the run's process group and every descendant, then checks that none survived.

    Ray's workers get process groups of their own, so killing the group alone leaves them. Every
    process of the tree is first stopped (SIGSTOP), until a pass finds no new one: a stopped process
    cannot fork, so nothing escapes between the listing and the kill. Only this run's processes are
    touched, by pid; `ray stop` would also stop other Ray clusters on the machine.
    ``whole_sessions``: a process of the killed Ray sessions still running elsewhere is a survivor
    (False for one node of a cluster: the other nodes share its session name).
    """
    root = psutil.Process(pid)
    frozen: dict[int, psutil.Process] = {}
    while True:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        new = [p for p in tree if p.pid not in frozen]
        if not new:
            break
        for p in new:
            try:
                p.suspend()
                frozen[p.pid] = p
            except psutil.NoSuchProcess:
                pass
    sessions = set()
    for p in frozen.values():
        try:
            sessions.update(a.split("=", 1)[1] for a in p.cmdline() if a.startswith("--session-name="))
        except psutil.Error:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in frozen.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs([p for p in frozen.values() if p.pid != pid], timeout=30)
    survivors = [p.pid for p in alive if _running(p)]
    if whole_sessions:
        survivors += [p.pid for p in psutil.process_iter() if _in_sessions(p, sessions)]
    return {"processes_killed": len(frozen), "ray_sessions": sorted(sessions), "survivors": sorted(set(survivors))}


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _in_sessions(p: psutil.Process, sessions: set[str]) -> bool:
    try:
        return any(s in a for a in p.cmdline() for s in sessions)
    except psutil.Error:
        return False


def port_free(port: int) -> bool:
    """Nothing listens on the port (connections of a killed server in TIME_WAIT do not count: servers
    bind with SO_REUSEADDR, as here)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# -- looking at a run directory -----------------------------------------------------------------
def stages_of(config: Path) -> tuple[str, ...]:
    """The stages a run of this config publishes (no MLE-only stage when its ablation is off)."""
    import yaml

    training = (yaml.safe_load(config.read_text()) or {}).get("training") or {}
    return tuple(s for s in STAGES if s != "training_mle_only" or training.get("ablation_mle_only", True))


def first_unfinished(run: RunDir, stages: tuple[str, ...] = STAGES) -> Optional[str]:
    return next((s for s in stages if not run.is_done(s)), None)


def work_files(run: RunDir, stage: str) -> list[str]:
    """The checkpoints of a stage's sub-steps (names only; Ray Train's as one count)."""
    work = run.work_dir(stage)
    if not work.is_dir():
        return []
    names = sorted(p.name for p in work.iterdir() if p.name != "ray_train")
    ckpts = {p for pattern in ("*/checkpoint_*", "*/*step_*") for p in (work / "ray_train").glob(pattern)}
    return names + ([f"ray_train: {len(ckpts)} checkpoint folders"] if (work / "ray_train").exists() else [])


def check_checkpoints(run: RunDir) -> list[str]:
    """Every sub-step checkpoint whose meta names its Parquet must match that Parquet's sha256
    (runs.checkpointed writes the Parquet first, then the meta)."""
    problems = []
    for meta in sorted((run.root / WORK).glob("*/*.json")):
        data = meta.with_suffix(".parquet")
        saved = read_json(meta)
        if "sha256" in saved and data.is_file() and saved["sha256"] != file_sha256(data):
            problems.append(f"{meta.relative_to(run.root)}: sha256 does not match {data.name}")
    return problems


def check_published(run: RunDir) -> list[str]:
    """Every published stage is whole: its manifest parses and all its Parquet files read."""
    import pyarrow.parquet as pq

    problems = []
    for stage in STAGES:
        folder = run.stage_dir(stage)
        if not folder.exists():
            continue
        if not run.is_done(stage):
            problems.append(f"{stage}/ exists without a {MANIFEST}")
            continue
        try:
            read_json(folder / MANIFEST)
            for path in folder.rglob("*.parquet"):
                pq.read_table(path)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the finding
            problems.append(f"{stage}: unreadable output: {type(err).__name__}: {err}"[:300])
    return problems


def parquet_schemas(run: RunDir) -> dict[str, str]:
    """'stage/relative/path.parquet' -> its Arrow schema as text, for every finished stage."""
    import pyarrow.parquet as pq

    out = {}
    for stage in STAGES:
        if run.is_done(stage):
            for path in sorted(run.stage_dir(stage).rglob("*.parquet")):
                out[str(path.relative_to(run.root))] = pq.read_schema(path).to_string()
    return out


def check_run_dir(
    run: RunDir, reference: Optional[dict[str, str]] = None, stages: tuple[str, ...] = STAGES
) -> tuple[list[str], dict]:
    """Checks a finished run directory; returns (problems, facts). Reads only, takes no lock.

    Complete: every stage has a manifest naming it. Consistent: each manifest's ``upstream`` equals
    the current ``upstream_key`` (config hash + manifest digest) of the stage it read; row counts
    match the manifests; no two rows share an id; Parquet schemas equal the reference run's (else
    the artifacts' column lists); training outputs listed in the manifest exist. Clean: no temporary
    or trash file anywhere, no work folder left, private modes, and the lock is not held.
    """
    import pandas as pd

    problems: list[str] = []
    facts: dict = {"rows": {}}
    for stage in stages:
        if not run.is_done(stage):
            problems.append(f"{stage}: not finished (no {MANIFEST})")
    if problems:
        return problems, facts
    problems += check_published(run)
    manifests = {s: run.manifest(s) for s in stages}
    for stage, m in manifests.items():
        if m.get("stage") != stage:
            problems.append(f"{stage}/{MANIFEST} names stage {m.get('stage')!r}")
        for name, key in (m.get("upstream") or {}).items():
            source = VARIANTS[name].stage if name in VARIANTS else name
            if key != upstream_key(run, source):
                problems.append(f"{stage}: recorded upstream {name} {key} != current {upstream_key(run, source)}")
    for stage in stages[1:]:
        if not manifests[stage].get("upstream"):
            problems.append(f"{stage}: its manifest records no upstream digests")

    frames = {}
    for stage, files in ROW_KEYS.items():
        for rel, key in files.items():
            path = run.stage_dir(stage) / rel
            if not path.is_file():
                problems.append(f"{stage}/{rel}: missing")
                continue
            df = frames[f"{stage}/{rel}"] = pd.read_parquet(path)
            facts["rows"][f"{stage}/{rel}"] = len(df)
            dup = int(df.duplicated(subset=key).sum())
            if dup:
                problems.append(f"{stage}/{rel}: {dup} rows repeat an id ({', '.join(key)})")
    counts = manifests["synthesis"].get("counts", {})
    if counts.get("triplets") != facts["rows"].get("synthesis/data/triplets.parquet"):
        problems.append(f"synthesis: manifest counts {counts.get('triplets')} triplets, data has "
                        f"{facts['rows'].get('synthesis/data/triplets.parquet')}")  # fmt: skip
    kept = manifests["refinement"].get("quality", {}).get("kept")
    if kept != facts["rows"].get("refinement/data/triplets.parquet"):
        problems.append(
            f"refinement: manifest keeps {kept}, data has {facts['rows'].get('refinement/data/triplets.parquet')}"
        )
    ev = manifests["evaluation"]
    per_model = ev["prompts"]["generated_per_model"] + ev["prompts"]["sampled_answers_per_model"]
    gen = frames.get("evaluation/data/generations.parquet")
    if gen is not None:
        by_model = gen.groupby("model").size().to_dict()
        if by_model != {m: per_model for m in ev["models"]}:
            problems.append(f"evaluation: rows per model {by_model}, manifest says {per_model} for {ev['models']}")
    for stage in (s for s in stages if s.startswith("training")):
        m, folder = manifests[stage], run.stage_dir(stage)
        for name, rel in m.get("outputs", {}).items():
            if rel and not (folder / rel).exists():
                problems.append(f"{stage}: manifest output {name} ({rel}) missing")
        reports = sum(1 for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip())
        if reports != m["metrics"]["reports"]:
            problems.append(f"{stage}: metrics.jsonl has {reports} reports, manifest {m['metrics']['reports']}")
        for st in folder.rglob("*.safetensors"):
            try:
                from safetensors import safe_open

                with safe_open(str(st), "pt") as f:
                    list(f.keys())
            except Exception as err:  # noqa: BLE001
                problems.append(f"{stage}: {st.name} unreadable: {err}"[:200])

    schemas = parquet_schemas(run)
    facts["parquet_files"] = len(schemas)
    if reference is not None:
        if set(schemas) != set(reference):
            problems.append(f"Parquet files differ from the reference run: {sorted(set(schemas) ^ set(reference))}")
        problems += [
            f"{p}: schema differs from the reference run"
            for p in schemas
            if p in reference and schemas[p] != reference[p]
        ]
    for rel, cols in EXPECTED_COLUMNS.items():
        got = list(frames[rel].columns) if rel in frames else []
        exact = rel.startswith("synthesis/")
        if (got != list(cols)) if exact else not set(cols) <= set(got):
            problems.append(f"{rel}: columns {got}, expected {'' if exact else 'at least '}{list(cols)}")

    leftovers = [str(p.relative_to(run.root)) for p in run.root.rglob("*") if ".tmp-" in p.name or ".trash-" in p.name]
    work = [p.name for p in (run.root / WORK).iterdir()] if (run.root / WORK).is_dir() else []
    problems += [f"leftover {p}" for p in leftovers] + [f"leftover work folder {WORK}/{w}" for w in work]
    for stage in stages:
        for p in [run.stage_dir(stage), *run.stage_dir(stage).rglob("*")]:
            mode = p.stat().st_mode & 0o777
            if mode != (0o700 if p.is_dir() else 0o600):
                problems.append(f"{p.relative_to(run.root)} has mode {oct(mode)}")
                break
    fd = os.open(run.root / LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        problems.append("the run directory's lock is still held")
    finally:
        os.close(fd)
    facts["checkpoint_problems"] = check_checkpoints(run)
    problems += facts["checkpoint_problems"]
    return problems, facts


def same_data(run: RunDir, ref: RunDir) -> dict[str, bool]:
    """Whether each stage's rows equal the reference run's (informational: CPU decoding and batching
    need not be bit-reproducible)."""
    import pandas as pd

    out = {}
    for stage, files in ROW_KEYS.items():
        for rel, key in files.items():
            a, b = pd.read_parquet(run.stage_dir(stage) / rel), pd.read_parquet(ref.stage_dir(stage) / rel)
            drop = [c for c in a.columns if c.endswith("seconds")]
            a = a.drop(columns=drop).sort_values(key).reset_index(drop=True)
            b = b.drop(columns=drop).sort_values(key).reset_index(drop=True)
            out[f"{stage}/{rel}"] = bool(a.shape == b.shape and a.astype(str).equals(b.astype(str)))
    return out


# -- the bench ----------------------------------------------------------------------------------
def reference_run(config: Path, out: Path, timeout: float) -> dict:
    """An uninterrupted run: its stage start times, durations and Parquet schemas."""
    run = RunDir(out / "reference")
    saved = out / "reference.json"
    if saved.is_file() and all(run.is_done(s) for s in STAGES) and read_json(saved).get("config") == config.read_text():
        return read_json(saved)
    if run.root.exists():
        shutil.rmtree(run.root)
    attempt = Attempt(config, run.root, out / "reference.log")
    rc = attempt.finish(timeout)
    wall = attempt.elapsed()
    if rc != 0:
        raise SystemExit(f"the reference run failed (rc {rc}); see {out / 'reference.log'}")
    starts = [attempt.started[s] for s in STAGES]
    durations = {s: round(b - a, 1) for s, a, b in zip(STAGES, starts, [*starts[1:], wall])}
    ref = {"config": config.read_text(), "wall_s": round(wall, 1), "stage_start_s": attempt.started, "stage_s": durations,
           "schemas": parquet_schemas(run)}  # fmt: skip
    saved.write_text(json.dumps(ref, indent=2))
    return ref


def kill_plan(n: int, durations: dict[str, float], rng: random.Random) -> list[tuple[str, float]]:
    """(target stage, delay after its start) for each kill: stages in order, equally often, each
    delay uniform over that stage's reference duration."""
    return [(s, round(rng.uniform(0, durations[s]), 1)) for s in (STAGES[k * len(STAGES) // n] for k in range(n))]


def kill_once(config: Path, run: RunDir, target: str, delay: float, log_path: Path, timeout: float):
    """Starts `ptalign run`, kills it ``delay`` s after ``target`` starts (or the first unfinished
    stage after it, when it is finished already); returns (attempt, kill record or None if it ended)."""
    if run.is_done(target):
        target = first_unfinished(run) or target
    attempt = Attempt(config, run.root, log_path)
    if not (attempt.wait_for_stage(target, timeout) and attempt.sleep_unless_done(delay)):
        return attempt, None
    return attempt, {"target": target, "delay_s": delay, **kill_record(attempt, run)}


def kill_when(config: Path, run: RunDir, ready, log_path: Path, timeout: float):
    """Starts `ptalign run` and kills it as soon as ``ready()`` is true (a chosen point, for CI);
    returns (attempt, kill record or None if the run ended first)."""
    attempt = Attempt(config, run.root, log_path)
    deadline = time.monotonic() + timeout
    while not ready():
        if attempt.proc.poll() is not None:
            attempt.close()
            return attempt, None
        if time.monotonic() > deadline:
            attempt.kill()
            raise TimeoutError(f"`ptalign run` did not reach the kill point in {timeout:.0f}s; see {log_path}")
        time.sleep(0.2)
    return attempt, kill_record(attempt, run)


def kill_record(attempt: Attempt, run: RunDir) -> dict:
    """Kills the attempt and says where it was: the stage hit (the first one unfinished - stage
    folders do not change once every process is dead), its sub-step checkpoints, what survived."""
    t_kill = attempt.elapsed()
    kill = attempt.kill()
    hit = first_unfinished(run, attempt.stages)
    return {
        "t_kill_s": round(t_kill, 1), "stage_hit": hit,
        "stage_hit_s": round(t_kill - attempt.started[hit], 1) if hit in attempt.started else None,
        "work_files": work_files(run, hit) if hit else [], "last_log_line": attempt.last_line, **kill,
        "published": [s for s in STAGES if run.is_done(s)],
        "snapshot_problems": check_published(run) + check_checkpoints(run),
    }  # fmt: skip


def rerun_record(attempt: Attempt, done_before: list[str]) -> dict:
    """What a rerun did with the previous attempt's finished stages: each must be reported finished."""
    redone = [s for s in done_before if s not in attempt.already]
    return {"already_finished": attempt.already, "finished_stages_redone": redone,
            "resumed_steps": sorted(attempt.resumed), "rc": attempt.proc.returncode}  # fmt: skip


def chaos(config: Path, run: RunDir, plan: list[tuple[str, float]], logs: Path, timeout: float, judge_port: int,
          say=print) -> dict:  # fmt: skip
    """Runs the kill plan on one run directory, then lets the run finish; returns what happened."""
    kills, problems = [], []
    sessions: list[str] = []
    for k, (target, delay) in enumerate(plan, 1):
        attempt, kill = kill_once(config, run, target, delay, logs / f"attempt-{k:02d}.log", timeout)
        if kills:  # this attempt is the rerun after the previous kill
            kills[-1]["rerun"] = rerun = rerun_record(attempt, kills[-1]["published"])
            if rerun["finished_stages_redone"]:
                problems.append(f"rerun after kill {k - 1} redid finished stages {rerun['finished_stages_redone']}")
        if kill is None:
            rc = attempt.finish(timeout)
            say(f"kill {k:2d}/{len(plan)}: not fired, the run ended first (rc {rc})")
            if rc != 0:
                problems.append(f"attempt {k} ended with rc {rc} before its kill (see {attempt._log.name})")
            break
        kill["judge_port_free"] = port_free(judge_port)
        new = [s for s in kill["ray_sessions"] if s in sessions]
        sessions += kill["ray_sessions"]
        for why, bad in (("survivors", kill["survivors"]), ("published stage or checkpoint broken", kill["snapshot_problems"]),
                         ("reused an earlier Ray session", new)):  # fmt: skip
            if bad:
                problems.append(f"kill {k}: {why}: {bad}")
        if not kill["judge_port_free"]:
            problems.append(f"kill {k}: judge port {judge_port} still taken")
        kills.append({"kill": k, **kill})
        say(f"kill {k:2d}/{len(plan)}: t={kill['t_kill_s']:6.1f}s (target {target} +{delay:.1f}s) hit "
            f"{kill['stage_hit']} at +{kill['stage_hit_s']}s, work {kill['work_files'][:4]}; "
            f"{kill['processes_killed']} processes killed, survivors {len(kill['survivors'])}, "
            f"snapshot {'ok' if not kill['snapshot_problems'] else kill['snapshot_problems']}")  # fmt: skip
    final = {}
    if not problems and (not kills or "rerun" not in kills[-1]):  # else the run already finished
        t0 = time.monotonic()
        attempt = Attempt(config, run.root, logs / "final.log")
        rc = attempt.finish(timeout)
        final = {"rc": rc, "wall_s": round(time.monotonic() - t0, 1)}
        if kills:
            kills[-1]["rerun"] = rerun = rerun_record(attempt, kills[-1]["published"])
            if rerun["finished_stages_redone"]:
                problems.append(f"the final rerun redid finished stages {rerun['finished_stages_redone']}")
        if rc != 0:
            problems.append(f"the final rerun failed with rc {rc} (see {logs / 'final.log'})")
    for kill in kills:
        r = kill.get("rerun", {})
        say(f"rerun after kill {kill['kill']:2d}: rc {r.get('rc')}, found finished {r.get('already_finished')}, "
            f"resumed from checkpoints {r.get('resumed_steps')}")  # fmt: skip
    return {"kills": kills, "final": final, "problems": problems}


def idempotent_rerun(config: Path, run: RunDir, log_path: Path, timeout: float) -> list[str]:
    """One more `ptalign run`: every stage must be found finished (config hash and upstream digests
    checked by the project itself), nothing redone."""
    attempt = Attempt(config, run.root, log_path)
    rc = attempt.finish(timeout)
    missing = [s for s in STAGES if s not in attempt.already]
    return ([f"idempotent rerun rc {rc}"] if rc else []) + [f"idempotent rerun redid {s}" for s in missing]


def _saved_port(config: Path) -> Optional[int]:
    """The judge port of an earlier invocation's config if still free: same config, reference reused."""
    import yaml

    port = yaml.safe_load(config.read_text())["judge"]["port"] if config.is_file() else None
    return port if port and port_free(port) else None


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()], "nice": os.nice(0)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/ptalign-chaos"), help="reference and chaos runs, logs")
    p.add_argument("--port", type=int, default=0, help="judge port (default: a free one, fixed for every attempt)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one attempt may take")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results-chaos-kill.json")
    args = p.parse_args()
    from pipeline_config import free_port
    from tiny_model import tiny_model_dir

    t_start = time.monotonic()
    info = machine()
    args.workdir.mkdir(parents=True, exist_ok=True)
    port = args.port or _saved_port(args.workdir / "tiny.yaml") or free_port()
    config = write_config(args.workdir / "tiny.yaml", tiny_model_dir(Path(run_env()["PTALIGN_HOME"])), port, MORE_DATA)
    print(f"[chaos] reference run in {args.workdir / 'reference'}", flush=True)
    ref = reference_run(config, args.workdir, args.timeout)
    print(f"[chaos] reference: {ref['wall_s']}s, stages {ref['stage_s']}", flush=True)

    run = RunDir(args.workdir / "chaos")
    if run.root.exists():
        shutil.rmtree(run.root)
    logs = args.workdir / "logs"
    logs.mkdir(exist_ok=True)
    plan = kill_plan(args.kills, ref["stage_s"], random.Random(args.seed))
    print(f"[chaos] {len(plan)} kills: {plan}", flush=True)
    result = chaos(config, run, plan, logs, args.timeout, port, say=lambda m: print(f"[chaos] {m}", flush=True))
    problems = result["problems"]
    facts: dict = {}
    if not problems:
        found, facts = check_run_dir(run, ref["schemas"])
        problems += found
        facts["same_data_as_reference"] = same_data(run, RunDir(args.workdir / "reference"))
        problems += idempotent_rerun(config, run, logs / "idempotent.log", args.timeout)
    hit = sorted({k["stage_hit"] for k in result["kills"]}, key=STAGES.index)
    outcome = "pass" if not problems and len(result["kills"]) == len(plan) and set(hit) == set(STAGES) else "fail"
    out = {
        "issue": 13, "command": " ".join(["bench/chaos_kill.py", *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": info | {"load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}, "seed": args.seed,
        "kills_requested": len(plan), "kills_fired": len(result["kills"]), "stages_hit": hit,
        "reference": {k: v for k, v in ref.items() if k not in ("schemas", "config")},
        "config_overrides": MORE_DATA, "plan": plan, **result,
        "checks": facts, "problems": problems, "outcome": outcome, "wall_s": round(time.monotonic() - t_start, 1),
    }  # fmt: skip
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"[chaos] {outcome}: {len(result['kills'])} kills, stages hit {hit}, problems {problems or 'none'}; "
          f"{out['wall_s']:.0f}s; wrote {args.out}")  # fmt: skip
    return 0 if outcome == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
