"""`ray job submit` round trip: a real Ray head on 127.0.0.1, the documented runtime_env, a small
pipeline (synthesis on the tiny model) submitted through the Job Submission API, outputs checked."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline_config import free_port, tiny_pipeline_config

from ptalign_ray.runs import RunDir, read_json

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` on loopback with token auth (its own token), stopped by SIGTERM."""
    token = tmp_path / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    gcs_port, dash_port = free_port(), free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
         "--num-cpus=4", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dash_port}"
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 180
        while True:
            assert head.poll() is None, "ray start --head exited early"
            try:
                client = JobSubmissionClient(address)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        yield client
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        head.send_signal(signal.SIGTERM)  # --block stops every process it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_submitted_synthesis_job_succeeds_and_writes_its_outputs(tmp_path, tiny_model, ray_head):
    from ray.job_submission import JobStatus

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_pipeline_config(tiny_model)))
    run_dir = tmp_path / "run"
    # The documented runtime_env (jobs/runtime_env.yaml), with the repository as working_dir.
    runtime_env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)
    runtime_env.setdefault("env_vars", {})["PTALIGN_HOME"] = os.environ["PTALIGN_HOME"]
    job_id = ray_head.submit_job(
        entrypoint=f"{sys.executable} -m ptalign_ray synthesize --config {config} --run-dir {run_dir}",
        runtime_env=runtime_env,
    )
    deadline = time.monotonic() + 600
    while not (status := ray_head.get_job_status(job_id)).is_terminal():
        assert time.monotonic() < deadline, "job did not finish in 10 minutes"
        time.sleep(3)
    logs = ray_head.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "Connecting to existing Ray cluster" in logs  # the job joined the head, it did not start its own Ray
    manifest = read_json(RunDir(run_dir).stage_dir("synthesis") / "manifest.json")
    assert manifest["counts"]["triplets"] > 0
    assert list((RunDir(run_dir).stage_dir("synthesis") / "data").glob("*.parquet"))
