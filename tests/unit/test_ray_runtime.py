"""Starting a local Ray: a start that timed out (ray-project/ray#65983, an overloaded machine) is
tried once more, after stopping what it left; any other error is raised at once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ptalign_ray.ray_runtime import _start_local

TIMED_OUT = Exception("The current node timed out during startup. This could happen because ...")


def _fake_init(errors: list[Exception], spawned: list[subprocess.Popen]):
    """A ray.init that starts a child process (as ray.init starts the GCS) and raises the next error."""

    def init(**kwargs):
        spawned.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]))
        if errors:
            raise errors.pop(0)
        return kwargs

    return init


def test_a_start_that_timed_out_is_tried_again_and_its_processes_stopped(capsys):
    spawned: list[subprocess.Popen] = []
    try:
        assert _start_local(_fake_init([TIMED_OUT], spawned), address="local") == {"address": "local"}
        assert len(spawned) == 2
        spawned[0].wait(timeout=30)  # the failed start's process is gone
        assert spawned[1].poll() is None  # the good start's is not touched
        assert "starting it once more" in capsys.readouterr().err
    finally:
        for p in spawned:
            p.kill()
            p.wait()


@pytest.mark.parametrize("errors", [[TIMED_OUT, TIMED_OUT], [ValueError("bad num_cpus")]])
def test_a_second_timeout_or_another_error_is_raised(errors):
    spawned: list[subprocess.Popen] = []
    first = errors[-1]
    try:
        with pytest.raises(type(first)) as raised:
            _start_local(_fake_init(list(errors), spawned), address="local")
        assert raised.value is first
        assert len(spawned) == len(errors)
    finally:
        for p in spawned:
            p.kill()
            p.wait()


def test_a_lost_node_worker_or_object_is_found_behind_the_errors_that_wrap_it():
    import ray.exceptions
    from ray.train import ControllerError, WorkerGroupError
    from ray.train.v2._internal.exceptions import (
        UserExceptionWithTraceback,
        WorkerGroupStartupTimeoutError,
        WorkerHealthCheckFailedError,
    )

    from ptalign_ray.ray_runtime import lost_cluster_part

    died = ray.exceptions.ActorDiedError()
    task = ray.exceptions.RayTaskError("answer", "Traceback ...", died)  # Ray Data's task waited on the engine
    try:
        try:
            raise task
        except ray.exceptions.RayTaskError as inner:
            raise RuntimeError("the dataset failed") from inner
    except RuntimeError as outer:
        assert lost_cluster_part(outer) is not None
    assert lost_cluster_part(ray.exceptions.NodeDiedError("node 1 died")) is not None
    assert lost_cluster_part(ray.exceptions.ObjectLostError("ab" * 14, "owner", "")) is not None
    assert lost_cluster_part(WorkerGroupError("training failed", {0: died})) is not None  # Ray Train gave up
    # what Ray Train 2.60 reports when a worker's node died: a failed health check around the actor's death
    health = WorkerHealthCheckFailedError("worker 1 failed its health check", died)
    gloo = UserExceptionWithTraceback(RuntimeError("Connection closed by peer"), "Traceback ...")
    assert lost_cluster_part(WorkerGroupError("training failed", {0: gloo, 1: health})) is health
    assert lost_cluster_part(ControllerError(WorkerGroupStartupTimeoutError(2))) is not None
    # the training code's own error (a bug, an unreadable checkpoint) is not a lost part of the cluster
    own = UserExceptionWithTraceback(ValueError("no readable checkpoint"), "Traceback ...")
    assert lost_cluster_part(WorkerGroupError("training failed", {0: own})) is None
    assert lost_cluster_part(ValueError("a bug")) is None
    bug = ray.exceptions.RayTaskError("answer", "Traceback ...", ValueError("a bug in a task"))
    assert lost_cluster_part(bug) is None  # an error in the task's own code is a bug, not a lost node
