"""`ray job submit` round trip: a real Ray head on 127.0.0.1 with token authentication, the
documented runtime_env, a small pipeline (synthesis on the tiny model) submitted through the Job
Submission API from a separate client process, outputs checked; a client without the token is refused."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from pipeline_config import free_port, tiny_pipeline_config

from ptalign_ray.runs import RunDir, read_json

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

# The job client, run in its own process: Ray caches the auth token per process, so a client in
# the test process (which has used another Ray already) would send the wrong one.
CLIENT = textwrap.dedent(
    """
    import json, sys, time
    from ray.job_submission import JobSubmissionClient, JobStatus

    address, entrypoint, runtime_env = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    deadline = time.monotonic() + 180
    while True:  # the dashboard, then the head's job agent, come up after `ray start` returns
        try:
            client = JobSubmissionClient(address)
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(3)
    deadline = time.monotonic() + 600
    while not (status := client.get_job_status(job_id)).is_terminal():
        if time.monotonic() > deadline:
            raise SystemExit("job did not finish in 10 minutes")
        time.sleep(3)
    logs = client.get_job_logs(job_id)
    joined = "Connecting to existing Ray cluster" in logs  # the job joined the head, no Ray of its own
    print(json.dumps({"status": str(status), "joined_head": joined, "logs": logs[-4000:]}))
    """
)


def _status(url: str, authorization: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": authorization} if authorization else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_submitted_synthesis_job_succeeds_and_writes_its_outputs(tmp_path, tiny_model):
    token = tmp_path / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    gcs_port, dash_port = free_port(), free_port()
    # Every listener of the head gets its own free port: the session's local Ray (other tests)
    # already holds the agents' default ports, and an agent that cannot bind never registers
    # ("No available agent to submit job").
    agent_ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                   f"--ray-client-server-port={free_port()}"]  # fmt: skip
    ray_bin = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
         "--num-cpus=4", "--disable-usage-stats", *agent_ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        config = tmp_path / "tiny.yaml"
        config.write_text(yaml.safe_dump(tiny_pipeline_config(tiny_model)))
        run_dir = tmp_path / "run"
        # The documented runtime_env (jobs/runtime_env.yaml), with the repository as working_dir.
        runtime_env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
        runtime_env["working_dir"] = str(REPO)
        runtime_env.setdefault("env_vars", {})["PTALIGN_HOME"] = os.environ["PTALIGN_HOME"]
        entrypoint = f"{sys.executable} -m ptalign_ray synthesize --config {config} --run-dir {run_dir}"
        client = subprocess.run(
            [sys.executable, "-c", CLIENT, f"http://127.0.0.1:{dash_port}", entrypoint, json.dumps(runtime_env)],
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr[-3000:]
        result = json.loads(client.stdout.strip().splitlines()[-1])
        assert result["status"] == "SUCCEEDED", result["logs"]
        assert result["joined_head"], result["logs"]
        manifest = read_json(RunDir(run_dir).stage_dir("synthesis") / "manifest.json")
        assert manifest["counts"]["triplets"] > 0
        assert list((RunDir(run_dir).stage_dir("synthesis") / "data").glob("*.parquet"))
        # A client without the cluster's token is refused (401), one with another token too (403).
        jobs = f"http://127.0.0.1:{dash_port}/api/jobs/"
        for header, status in (
            (None, 401),
            (f"Bearer {secrets.token_hex(32)}", 403),
            (f"Bearer {token.read_text()}", 200),
        ):
            assert _status(jobs, header) == status, header and header[:12]
    finally:
        head.send_signal(signal.SIGTERM)  # --block stops every process it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
