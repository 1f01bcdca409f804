"""Starting or joining Ray: a local Ray stays on loopback, a cluster is joined by address."""

from __future__ import annotations

import os
import sys
from typing import Optional

from ptalign_ray.config import RayConfig

# Set before Ray starts so the raylet, GCS and every worker stay on loopback.
LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity). Ray narrows OMP_NUM_THREADS to an actor's
    num_cpus, not the affinity, so work that sizes its own thread pool starts from this."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def verbose() -> bool:
    """``ptalign --verbose`` (or PTALIGN_VERBOSE=1): Ray's and vLLM's own output reaches the console."""
    return os.environ.get("PTALIGN_VERBOSE", "0") not in ("", "0", "false")


START_TIMED_OUT = "timed out during startup"  # ray.init's message when its raylet did not come up


def _start_local(init, **kwargs):
    """``init(**kwargs)`` (ray.init of a local Ray), once more if the first start timed out.

    On an overloaded machine the raylet exits when its dashboard agent takes over 15 s to start
    (ray-project/ray#65983) and ray.init raises "The current node timed out during startup": found
    when a rerun after a SIGKILL (bench/chaos_kill.py) met load 30 on two cores. Nothing has run yet
    and a second start succeeds; the processes the failed start left (GCS, dashboard) are stopped.
    """
    import psutil  # a dependency of vLLM and Ray's extras

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    try:
        return init(**kwargs)
    except Exception as err:
        if START_TIMED_OUT not in str(err):
            raise
        left = [p for p in me.children(recursive=True) if p.pid not in before]
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=30)
        print(f"ptalign: the local Ray did not start in time ({err}); starting it once more", file=sys.stderr)
    return init(**kwargs)


def init_ray(cfg: RayConfig, quiet: Optional[bool] = None):
    """Connects to Ray once per process: a local instance on 127.0.0.1 unless an address is given.

    Unless verbose, the console gets the project's own lines only: worker output (vLLM, Ray Train
    reports) stays in Ray's log files, Ray Data logs at WARNING, and progress bars are drawn only
    on a terminal (never dumped into a CI log or a job log).
    """

    import ray

    if ray.is_initialized():
        return ray
    if quiet is None:
        quiet = not verbose()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=not quiet)
    else:
        for key, value in LOCAL_ENV.items():
            os.environ.setdefault(key, value)
        # vLLM engines and Serve replicas want more logical CPUs than this machine has cores;
        # logical CPUs are scheduling slots, not threads, so oversubscribing is safe.
        num_cpus = cfg.num_cpus or max(4, os.cpu_count() or 1)
        mem = int(cfg.object_store_memory_gib * 2**30) if cfg.object_store_memory_gib else None
        _start_local(
            ray.init,
            address="local",  # never join a `ray start` cluster by accident; ray.address says when to
            num_cpus=num_cpus,
            object_store_memory=mem,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=not quiet,
            runtime_env={"env_vars": {k: os.environ[k] for k in LOCAL_ENV}},
        )
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.print_on_execution_start = False
    quiet_ray_loggers()  # after `import ray.data`, which configures its own loggers
    return ray


def quiet_ray_loggers() -> None:
    """Ray's and vLLM's driver-side loggers at WARNING unless verbose. `import ray.serve` sets its
    logger to INFO, so a caller that imports Serve later calls this again."""
    import logging
    import warnings

    if not verbose():
        for name in ("ray.data", "ray.train", "ray.serve", "ray.tune", "vllm"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # Ray Data's advice when a small pass (a refinement round with two rows) has fewer blocks
        # than the tasks it may run: expected here, and no use to a reader of the run's log
        warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks", category=UserWarning)


def serve_is_running() -> bool:
    """Whether Ray Serve already runs on the connected cluster (any proxy or application)."""
    from ray import serve

    status = serve.status()
    return bool(status.proxies or status.applications)


def remove_serve_app(name: str, serve_was_running: bool) -> None:
    """Removes one Serve application this process deployed, and Serve itself only when it was not
    running before and no other application runs on it now: serve.shutdown() would end every app on
    a shared cluster."""
    from ray import serve

    if name in serve.status().applications:
        serve.delete(name)
    if not serve_was_running and not serve.status().applications:
        serve.shutdown()


def lost_cluster_part(err: BaseException) -> Optional[BaseException]:
    """The Ray failure behind ``err`` when a node, worker process or object was lost (or Ray Train gave
    up restarting a group that lost one), else None: such a run resumes when the same command runs again.

    Looks through the causes Ray wraps a failure in (a task's ``cause``, Ray Train's worker and controller
    failures, a health check's failure). A Ray Train failure that is only the training code's own error
    (a bug, a bad checkpoint) is not a lost part: it is raised as it is.
    """
    import ray.exceptions

    lost: tuple[type, ...] = (
        ray.exceptions.RayActorError,  # incl. ActorDiedError: its process or node died
        ray.exceptions.NodeDiedError,
        ray.exceptions.WorkerCrashedError,
        ray.exceptions.LocalRayletDiedError,
        ray.exceptions.ObjectLostError,  # incl. OwnerDiedError
    )
    try:  # what Ray Train 2.60 raises when its workers' node went away (internal module: optional)
        from ray.train.v2._internal.exceptions import (
            WorkerGroupStartupFailedError,
            WorkerGroupStartupTimeoutError,
            WorkerHealthCheckFailedError,
            WorkerHealthCheckTimeoutError,
        )
        from ray.train.v2.api.exceptions import PreemptionError

        lost += (WorkerHealthCheckFailedError, WorkerHealthCheckTimeoutError, WorkerGroupStartupFailedError,
                 WorkerGroupStartupTimeoutError, PreemptionError)  # fmt: skip
    except ImportError:
        pass
    seen: set[int] = set()
    todo: list[object] = [err]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, lost):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "cause", None), getattr(e, "controller_failure", None),
                 getattr(e, "health_check_failure", None), getattr(e, "_base_exc", None)]  # fmt: skip
        todo += list(getattr(e, "worker_failures", {}).values())
    return None
