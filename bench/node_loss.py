"""Node loss (issue #13): a local multi-node Ray cluster on 127.0.0.1 loses a worker node while
`ptalign run` synthesizes and again while it trains; then Ray Train's elastic worker range grows
and shrinks with the nodes.

Why: a cluster loses nodes (preemption, hardware). A run must then finish - engine actors and Train
workers rescheduled, training resumed from its checkpoint - or stop with a message that names the
command that resumes it; never finish silently wrong.

    nice -n 15 .venv/bin/python bench/node_loss.py

1. A cluster: a head with no CPUs for work (GCS, the driver, Ray Train's and Serve's controllers)
   and worker nodes with CPUs and a custom resource of their name, each a `ray start --block` with
   its own raylet and temp dir in its own session. A node is lost by SIGKILLing its whole process
   tree (raylet, agents, Ray workers, vLLM engine processes), never with `ray stop`.
2. `ptalign run` on the tiny model joins the head (`ray.address`). Once synthesis has checkpointed
   its topics and generates questions, the node running the vLLM engine actor is lost and a
   replacement joins (as an autoscaler would add one); once training has written a checkpoint,
   the node running the Train worker is lost.
3. The run must end with rc 0, or with rc 75 and a message naming the command that resumes; then
   that command runs again and must finish. The finished directory must pass bench/chaos_kill.py's
   checks, training must have resumed from its checkpoint (not step 0) with every row trained
   exactly once per epoch, and one more run must find every stage finished.
4. Elastic: `ptalign train` with `training.num_workers: [1, 2]` on a copy of that run's data starts
   on one 1-CPU node; a second node joins (the group must grow to 2 workers), then a node is lost
   (the group must go on with 1, from its checkpoint).
5. No restart left: `ptalign train` with `training.max_failures: 0` on another copy loses its
   worker's node after a checkpoint: it must stop with rc 75 and a message naming the command, and
   that command, run again after a replacement node joined, must resume from the checkpoint.

Writes bench/results-node-loss.json. Prints only the bench's own lines, never the run's data.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import chaos_kill  # noqa: E402
import psutil  # noqa: E402
from pipeline_config import free_port  # noqa: E402

from ptalign_ray.ray_runtime import START_TIMED_OUT  # noqa: E402  (`ray start` on an overloaded machine)
from ptalign_ray.runs import RunDir  # noqa: E402

ENGINE = "EngineActor"  # Ray titles an actor's process "ray::<Class>...": the vLLM engine actor
TRAIN_WORKER = "RayTrainWorker"  # a Ray Train (v2) worker
RESUME_HINT = "run the same command to resume"
EXIT_RESUMABLE = 75


class Cluster:
    """A local multi-node Ray cluster on 127.0.0.1 with token authentication (its own token file).

    Every node is one `ray start --block` in its own session, with its own temp dir and ports (so
    it never meets another Ray on the machine): SIGTERM stops it cleanly, :meth:`lose` SIGKILLs
    its whole process tree as a failing machine would. ``env`` is what a client of it needs.
    """

    def __init__(self, root: Path, port: int, object_store_mib: int = 400):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port, self.address = root, port, f"127.0.0.1:{port}"
        self.object_store = object_store_mib * 2**20
        token = root / "auth_token"
        if not token.is_file():
            token.write_text(secrets.token_hex(32))
            token.chmod(0o600)
        # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the local-Ray setting, ray_runtime.LOCAL_ENV) would refuse to
        # start a worker node on Linux too: a cluster needs it on.
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
        self.nodes: dict[str, subprocess.Popen] = {}
        self.cpus: dict[str, int] = {}
        self.args: dict[str, list[str]] = {}
        self.start_retries: list[str] = []

    def _launch(self, name: str, args: list[str]) -> None:
        self.args[name] = args
        env = {**os.environ, **self.env}
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_AUTH_TOKEN", None)
        ports = [f"--{flag}={free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                 "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port")]  # fmt: skip
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--block", "--node-ip-address=127.0.0.1",
               f"--temp-dir={self.root / name}", "--disable-usage-stats", f"--object-store-memory={self.object_store}",
               *ports, *args]  # fmt: skip
        with open(self.root / f"{name}.log", "w") as out:
            self.nodes[name] = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _wait_started(self, names: list[str], timeout: float) -> float:
        """Waits for the nodes' `ray start`; one that timed out during startup (an overloaded machine:
        ray-project/ray#65983, see ray_runtime._start_local) is started once more."""
        t0 = time.monotonic()
        for name in names:
            log = self.root / f"{name}.log"
            while "Ray runtime started" not in log.read_text(errors="replace"):
                proc = self.nodes[name]
                if proc.poll() is not None and name not in self.start_retries and START_TIMED_OUT in log.read_text():
                    self.start_retries.append(name)
                    self._kill_leftovers(name)
                    self._launch(name, self.args[name])
                    continue
                if proc.poll() is not None:
                    raise RuntimeError(f"`ray start` of {name} exited with {proc.returncode}; see {log}")
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"`ray start` of {name} not up in {timeout:.0f}s; see {log}")
                time.sleep(0.3)
        return round(time.monotonic() - t0, 1)

    def _kill_leftovers(self, name: str) -> None:
        """What a failed `ray start` of a node left (its processes name the node's own temp dir)."""
        mine = str(self.root / name)
        for p in psutil.process_iter():
            try:
                if any(mine in part for part in p.cmdline()):
                    p.kill()
            except psutil.Error:
                pass

    def start_head(self, timeout: float = 180) -> float:
        """The head runs no work (0 CPUs): what it hosts (GCS, drivers, controllers) outlives any worker node."""
        self._launch("head", ["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
                              f"--ray-client-server-port={free_port()}"])  # fmt: skip
        return self._wait_started(["head"], timeout)

    def add_nodes(self, cpus: dict[str, int], timeout: float = 180) -> float:
        """Worker nodes (name -> CPUs), started together, each with the custom resource ``{name: 1}``;
        returns the seconds until all were up."""
        for name, n in cpus.items():
            self.cpus[name] = n
            resources = json.dumps({name: 1})
            self._launch(name, [f"--address={self.address}", f"--num-cpus={n}", f"--resources={resources}"])
        return self._wait_started(list(cpus), timeout)

    def add_node(self, name: str, cpus: int, timeout: float = 180) -> float:
        return self.add_nodes({name: cpus}, timeout)

    def workers(self) -> list[str]:
        return [n for n, p in self.nodes.items() if n != "head" and p.poll() is None]

    def count(self, title: str) -> dict[str, int]:
        """Per worker node: its processes whose title contains ``title`` (e.g. a Ray actor's class)."""
        out = {}
        for name in self.workers():
            try:
                tree = psutil.Process(self.nodes[name].pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            n = 0
            for p in tree:
                try:
                    n += any(title in part for part in p.cmdline()[:1])
                except psutil.Error:
                    pass
            if n:
                out[name] = n
        return out

    def lose(self, name: str) -> dict:
        """SIGKILLs every process of a node at once (chaos_kill.kill_tree: frozen first, none escapes)."""
        proc = self.nodes.pop(name)
        info = chaos_kill.kill_tree(proc.pid, whole_sessions=False)
        proc.wait()
        return {"node": name, "processes_killed": info["processes_killed"], "survivors": info["survivors"]}

    def stop_node(self, name: str) -> None:
        """Stops a node cleanly (`ray start --block` stops what it started on SIGTERM)."""
        proc = self.nodes.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            chaos_kill.kill_tree(proc.pid, whole_sessions=False)
            proc.wait()

    def stop(self) -> None:
        for name in [n for n in self.nodes if n != "head"] + [n for n in self.nodes if n == "head"]:
            self.stop_node(name)


def wait_for(ready: Callable[[], bool], attempt: chaos_kill.Attempt, timeout: float) -> bool:
    """True once ``ready()``; False if the attempt ended first or the timeout passed."""
    deadline = time.monotonic() + timeout
    while not ready():
        if attempt.proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def checkpoints(run: RunDir, stage: str = "training") -> list[str]:
    """Ray Train's checkpoint folders of a training stage (trainer.checkpoint_name), oldest first."""
    return sorted(p.name for p in run.work_dir(stage).glob("ray_train/*/*step_*"))


def resumed_from(name: str) -> int:
    """The step a checkpoint folder's worker group resumed from (``step_8_from_4`` -> 4; final: -1)."""
    _, _, rest = name.partition("_from_")
    return int(rest.split("_")[0]) if rest else -1


def error_lines(log: Path) -> list[str]:
    return [line.strip()[:600] for line in log.read_text(errors="replace").splitlines() if "ptalign: error" in line]


def training_checks(run: RunDir, stage: str = "training") -> tuple[list[str], dict]:
    """A finished training stage is not silently wrong: every row trained exactly once per epoch
    (samples seen = epochs x training pairs), reported steps strictly increasing; and what the run
    went through: the checkpoints it resumed from and the worker counts in order."""
    m = run.manifest(stage)
    history = [json.loads(line) for line in (run.stage_dir(stage) / "metrics.jsonl").read_text().splitlines()]
    steps = [h["step"] for h in history]
    sizes: list[int] = []
    for h in history:
        if "world_size" in h and (not sizes or sizes[-1] != h["world_size"]):
            sizes.append(h["world_size"])
    facts = {"steps": m["steps"], "epochs": m["epochs"], "samples_seen": m["samples_seen"], "resumed_from_steps": m["metrics"]["resumed_from_steps"],
             "world_sizes_in_order": sizes, "reports": len(history)}  # fmt: skip
    problems = []
    rows = m["data"]["train_pairs"] + m["data"].get("train_benign", 0)  # red-team pairs + helpful answers
    facts["train_rows"] = rows
    if m["samples_seen"] != m["epochs"] * rows:
        problems.append(f"{stage}: {m['samples_seen']} samples seen, expected {m['epochs']} x {rows} rows")
    if steps != sorted(set(steps)):
        problems.append(f"{stage}: reported steps not strictly increasing: {steps}")
    return problems, facts


# -- 1-3: `ptalign run` losing a node in synthesis and in training -----------------------------------
def pipeline_losses(cluster: Cluster, config: Path, run: RunDir, logs: Path, timeout: float, say) -> dict:
    """Loses the engine's node in synthesis and the Train worker's node in training; whenever the run
    stops, checks its message and runs the same command again (after a replacement node joined)."""
    kills: list[dict] = []
    attempts: list[dict] = []
    problems: list[str] = []
    topics = run.work_dir("synthesis") / "topics.json"
    points = [  # (why, ready, the process whose node is lost)
        (
            "synthesis generating (topics checkpointed)",
            lambda: topics.is_file() and bool(cluster.count(ENGINE)),
            ENGINE,
        ),
        ("training checkpointed", lambda: bool(checkpoints(run)) and bool(cluster.count(TRAIN_WORKER)), TRAIN_WORKER),
    ]

    def lose(why: str, title: str, attempt) -> dict:
        hosts = cluster.count(title)
        name = sorted(hosts)[0]
        t, hit = attempt.elapsed(), chaos_kill.first_unfinished(run)
        work = chaos_kill.work_files(run, hit) if hit else []
        info = cluster.lose(name)
        if info["survivors"]:
            problems.append(f"{why}: processes of {name} survived: {info['survivors']}")
        say(f"lost {name} at t={t:.0f}s of attempt {len(attempts) + 1} ({why}; it ran {hosts}); "
            f"{info['processes_killed']} processes killed")  # fmt: skip
        rec = {"why": why, "attempt": len(attempts) + 1, "t_s": round(t, 1), "ran": hosts, **info,
               "stage_hit": hit, "work_files": work}  # fmt: skip
        if title == ENGINE:  # an autoscaler would replace the node
            rec["replacement_start_s"] = cluster.add_node("node_c", cluster.cpus[name])
        back = wait_for(lambda: bool(cluster.count(title)), attempt, 600)
        rec["running_again_after_s"] = round(attempt.elapsed() - t, 1) if back else None
        rec["running_again_on"] = cluster.count(title)
        say(
            f"{title} running again: {rec['running_again_on'] or 'no'} ({rec['running_again_after_s']}s after the "
            f"loss{'; replacement node_c joined in %ss' % rec['replacement_start_s'] if title == ENGINE else ''})"
        )
        return rec

    attempt = chaos_kill.Attempt(config, run.root, logs / "attempt-1.log")
    while True:
        while points and wait_for(points[0][1], attempt, timeout):
            why, _, title = points.pop(0)
            kills.append(lose(why, title, attempt))
        k = len(attempts) + 1
        rc = attempt.finish(timeout)
        errors = error_lines(logs / f"attempt-{k}.log")
        attempts.append({"attempt": k, "rc": rc, "wall_s": round(attempt.elapsed(), 1), "errors": errors,
                         "already_finished": attempt.already, "resumed_steps": sorted(attempt.resumed)})  # fmt: skip
        say(f"attempt {k}: rc {rc} in {attempt.elapsed():.0f}s; found finished {attempt.already}; "
            f"resumed {sorted(attempt.resumed)}; errors {errors or 'none'}")  # fmt: skip
        if rc == 0:
            break
        if rc != EXIT_RESUMABLE or not any(RESUME_HINT in e for e in errors):
            problems.append(f"attempt {k} ended with rc {rc} without naming how to resume (see its log)")
            break
        if k == 4:
            problems.append("four attempts did not finish the run")
            break
        while len(cluster.workers()) < 2:  # the replacement an autoscaler would start
            cluster.add_node(f"node_r{k}", 2)
        attempt = chaos_kill.Attempt(config, run.root, logs / f"attempt-{k + 1}.log")
    problems += [f"kill point never reached: {why}" for why, _, _ in points]
    facts: dict = {}
    if attempts[-1]["rc"] == 0:
        found, facts = chaos_kill.check_run_dir(run)
        problems += found
        if not found:
            tproblems, facts["training"] = training_checks(run)
            problems += tproblems
            if not points and not facts["training"]["resumed_from_steps"]:
                problems.append("training lost its worker's node but did not resume from a checkpoint")
            problems += chaos_kill.idempotent_rerun(config, run, logs / "idempotent.log", timeout)
    return {"kills": kills, "attempts": attempts, "checks": facts, "problems": problems}


# -- 4: elastic worker range -------------------------------------------------------------------------
def elastic(cluster: Cluster, config: Path, run: RunDir, logs: Path, timeout: float, say) -> dict:
    """`ptalign train` with num_workers [1, 2]: starts on one 1-CPU node, grows when a second joins,
    goes on with one when a node is lost."""
    problems: list[str] = []
    events: dict = {}
    attempt = chaos_kill.Attempt(config, run.root, logs / "elastic.log", command="train")
    if not wait_for(
        lambda: bool(checkpoints(run)) and sum(cluster.count(TRAIN_WORKER).values()) == 1, attempt, timeout
    ):
        return {"problems": ["the elastic run never trained with one worker"], "rc": attempt.finish(timeout)}
    events["started_with"] = cluster.count(TRAIN_WORKER)
    events["join_t_s"] = round(attempt.elapsed(), 1)
    events["join_node_start_s"] = cluster.add_node("elastic_b", 1)
    say(f"elastic: training on {events['started_with']}; elastic_b joined at t={events['join_t_s']}s")
    grown = wait_for(lambda: sum(cluster.count(TRAIN_WORKER).values()) == 2, attempt, 300)
    events["grown_after_s"] = round(attempt.elapsed() - events["join_t_s"], 1) if grown else None
    events["grown_to"] = cluster.count(TRAIN_WORKER)
    say(f"elastic: {'grew to ' + str(events['grown_to']) if grown else 'did not grow'} "
        f"{events['grown_after_s']}s after the join")  # fmt: skip
    if grown:
        before = len(checkpoints(run))
        if wait_for(lambda: len(checkpoints(run)) > before, attempt, 300):
            events["loss_t_s"] = round(attempt.elapsed(), 1)
            groups = {resumed_from(n) for n in checkpoints(run)}
            events["lost"] = cluster.lose("elastic_b")
            # the restarted group has checkpointed (its folders name the step it resumed from)
            restarted = wait_for(lambda: bool({resumed_from(n) for n in checkpoints(run)} - groups), attempt, 300)
            events["restarted_after_s"] = round(attempt.elapsed() - events["loss_t_s"], 1) if restarted else None
            events["restarted_on"] = cluster.count(TRAIN_WORKER)
            say(f"elastic: lost elastic_b at t={events['loss_t_s']}s; the group restarted on {events['restarted_on']} "
                f"and checkpointed {events['restarted_after_s']}s later")  # fmt: skip
        else:
            problems.append("the grown group wrote no checkpoint before training ended")
    else:
        problems.append("the worker group did not grow when a node joined")
    rc = attempt.finish(timeout)
    events.update(rc=rc, wall_s=round(attempt.elapsed(), 1), errors=error_lines(logs / "elastic.log"))
    say(f"elastic: rc {rc} in {attempt.elapsed():.0f}s")
    if rc != 0:
        return {**events, "problems": problems + [f"the elastic run ended with rc {rc}"]}
    found, facts = training_checks(run)
    problems += found
    sizes = facts["world_sizes_in_order"]
    if grown and "lost" in events and sizes[-3:] != [1, 2, 1]:
        problems.append(f"worker counts in the reports {sizes}, expected them to end 1, 2, 1")
    return {**events, "checks": facts, "problems": problems}


# -- 5: no restart left: the message, then the same command -----------------------------------------
def stop_and_resume(cluster: Cluster, config: Path, run: RunDir, logs: Path, timeout: float, say) -> dict:
    """`ptalign train` with training.max_failures 0 loses its worker's node after a checkpoint: it must
    stop with rc 75 and a message naming the command; that command, run again once a replacement node
    joined, must resume from the checkpoint and finish."""
    problems: list[str] = []
    attempt = chaos_kill.Attempt(config, run.root, logs / "stop-1.log", command="train")
    if not wait_for(lambda: bool(checkpoints(run)) and bool(cluster.count(TRAIN_WORKER)), attempt, timeout):
        return {"problems": ["the run never checkpointed"], "rc": attempt.finish(timeout)}
    host = sorted(cluster.count(TRAIN_WORKER))[0]
    t, saved = attempt.elapsed(), checkpoints(run)
    first = {"t_s": round(t, 1), "checkpoints": saved, **cluster.lose(host)}
    first["rc"] = attempt.finish(timeout)
    first.update(wall_s=round(attempt.elapsed(), 1), errors=error_lines(logs / "stop-1.log"))
    say(f"stop: lost {host} at t={t:.0f}s after {saved}; rc {first['rc']}: {first['errors'] or 'no message'}")
    if first["rc"] != EXIT_RESUMABLE or not any(RESUME_HINT in e and "ptalign train" in e for e in first["errors"]):
        problems.append(f"the stopped run ended with rc {first['rc']} without naming the command that resumes it")
    second = {"replacement_start_s": cluster.add_node("stop_b", 1)}
    attempt = chaos_kill.Attempt(config, run.root, logs / "stop-2.log", command="train")
    second["rc"] = attempt.finish(timeout)
    second.update(wall_s=round(attempt.elapsed(), 1), errors=error_lines(logs / "stop-2.log"))
    say(f"stop: the same command again (replacement stop_b): rc {second['rc']} in {attempt.elapsed():.0f}s")
    facts: dict = {}
    if second["rc"] != 0:
        problems.append(f"the resumed run ended with rc {second['rc']}")
    else:
        found, facts = training_checks(run)
        problems += found
        if not facts["resumed_from_steps"]:
            problems.append("the resumed run did not start from the checkpoint")
    return {"stopped": first, "resumed": second, "checks": facts, "problems": problems}


def copy_data(src: RunDir, dst: RunDir) -> None:
    """The finished synthesis and refinement stages of ``src`` (the elastic run trains on them)."""
    if dst.root.exists():
        shutil.rmtree(dst.root)
    dst.root.mkdir(parents=True)
    for stage in ("synthesis", "refinement"):
        shutil.copytree(src.stage_dir(stage), dst.stage_dir(stage))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/ptalign-node-loss"), help="cluster, runs, logs")
    p.add_argument("--port", type=int, default=6390, help="the head's GCS port")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one attempt may take")
    p.add_argument("--elastic-epochs", type=int, default=12, help="long enough to see a join and a loss")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results-node-loss.json")
    args = p.parse_args()
    from tiny_model import tiny_model_dir

    t_start = time.monotonic()
    info = chaos_kill.machine()
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    logs = args.workdir / "logs"
    logs.mkdir(parents=True)
    cluster = Cluster(Path(f"/tmp/ray-nl-{args.port}"), args.port)  # short: Ray's socket paths have a length limit
    os.environ.update(cluster.env)  # every `ptalign` attempt is a client of this cluster
    say = lambda m: print(f"[node-loss] {m}", flush=True)  # noqa: E731
    model = tiny_model_dir(Path(chaos_kill.run_env()["PTALIGN_HOME"]))
    # Checkpoints every 2 steps and 3 epochs: training checkpoints early and runs on after it.
    training = {"checkpoint_every_steps": 2, "report_every_steps": 2, "epochs": 3}
    config = chaos_kill.write_config(args.workdir / "tiny.yaml", model, free_port(), {
        **chaos_kill.MORE_DATA, "ray": {"address": cluster.address}, "training": training})  # fmt: skip
    result: dict = {"issue": 13, "command": " ".join(["bench/node_loss.py", *sys.argv[1:]]),
                    "date": time.strftime("%Y-%m-%d %H:%M"), "machine": info, "outcome": "incomplete"}  # fmt: skip

    def phase(name: str, fn, *fn_args) -> None:
        """One part of the bench, saved as soon as it ends; an error in the bench itself (not in the
        run) is recorded as a problem."""
        try:
            result[name] = fn(*fn_args)
        except Exception as err:  # noqa: BLE001 - the results file records it
            result[name] = {"problems": [f"{fn.__name__} raised {type(err).__name__}: {err}"[:500]]}
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    try:
        result["cluster"] = {"head_start_s": cluster.start_head(), "head": "0 CPUs (GCS, drivers, controllers)"}
        result["cluster"]["nodes_start_s"] = cluster.add_nodes({"node_a": 2, "node_b": 2})
        say(f"cluster up at {cluster.address}: head (0 CPUs) + node_a, node_b (2 CPUs each)")
        run = RunDir(args.workdir / "run")
        phase("pipeline", pipeline_losses, cluster, config, run, logs, args.timeout, say)
        if run.is_done("refinement"):
            for name in cluster.workers():
                cluster.stop_node(name)
            cluster.add_node("elastic_a", 1)
            say("elastic: worker nodes stopped; elastic_a (1 CPU) started")
            erun = RunDir(args.workdir / "elastic")
            copy_data(run, erun)
            ecfg = chaos_kill.write_config(args.workdir / "elastic.yaml", model, free_port(), {
                **chaos_kill.MORE_DATA, "ray": {"address": cluster.address},
                "training": {**training, "epochs": args.elastic_epochs, "num_workers": [1, 2],
                             "elastic_resize_interval_s": 5, "ablation_mle_only": False}})  # fmt: skip
            phase("elastic", elastic, cluster, ecfg, erun, logs, args.timeout, say)
            srun = RunDir(args.workdir / "stop")
            copy_data(run, srun)
            scfg = chaos_kill.write_config(args.workdir / "stop.yaml", model, free_port(), {
                **chaos_kill.MORE_DATA, "ray": {"address": cluster.address},
                "training": {**training, "epochs": 6, "max_failures": 0, "ablation_mle_only": False}})  # fmt: skip
            phase("stop_and_resume", stop_and_resume, cluster, scfg, srun, logs, args.timeout, say)
    finally:
        cluster.stop()
    problems = result.get("pipeline", {}).get("problems", ["no pipeline result"])
    for part in ("elastic", "stop_and_resume"):
        problems = problems + result.get(part, {}).get("problems", [f"no {part} result"])
    result.setdefault("cluster", {})["start_retries"] = cluster.start_retries
    result.update(problems=problems, outcome="pass" if not problems else "fail",
                  wall_s=round(time.monotonic() - t_start, 1))  # fmt: skip
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    say(f"{result['outcome']}: problems {problems or 'none'}; {result['wall_s']:.0f}s; wrote {args.out}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
