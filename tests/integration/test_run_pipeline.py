"""`ptalign run` end to end on the tiny model, as a user runs it: interrupted mid-stage with Ctrl-C,
started again, finished stages are not redone and the run completes with a report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from pipeline_config import tiny_pipeline_config

from ptalign_ray.runs import RunDir, read_json

pytestmark = pytest.mark.integration


def _ptalign(*args: str) -> list[str]:
    return [sys.executable, "-m", "ptalign_ray", *args]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"ptalign run exited (rc={proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


# The whole pipeline twice on the tiny model (synthesis with its anchors, two trainings, three models
# evaluated greedy + sampled under three judges) plus two checks that nothing or everything is redone.
@pytest.mark.timeout(2700)
def test_interrupted_run_resumes_at_the_unfinished_stage_and_completes(tmp_path, tiny_model):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_pipeline_config(tiny_model)))
    run = RunDir(tmp_path / "run")
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)
    args = _ptalign("run", "--config", str(config), "--run-dir", str(run.root))

    # 1. Ctrl-C while refinement is running: synthesis is finished, refinement is not.
    with open(tmp_path / "first.log", "w") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # the stage line comes before the judge starts; on a loaded machine refinement's own work
            # folder can come and go between two polls
            started = lambda: "[run] stage refine" in (tmp_path / "first.log").read_text()  # noqa: E731
            _wait_for(started, proc, 1500, "refinement started")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 130
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert run.is_done("synthesis") and not run.is_done("refinement")
    synthesis_manifest = run.stage_dir("synthesis") / "manifest.json"
    before = synthesis_manifest.stat().st_mtime_ns

    # 2. The same command again: synthesis is skipped, refinement resumes and finishes.
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1500)
    assert "[synthesis] already finished" in done.stdout
    assert synthesis_manifest.stat().st_mtime_ns == before
    assert run.is_done("refinement")
    kept = read_json(run.stage_dir("refinement") / "manifest.json")["quality"]["kept"]
    if kept == 0:
        # The random tiny model rarely writes a positive the judge accepts; with nothing to train
        # on, the run must stop at training with a clear error, finished stages kept.
        assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
        assert "ptalign: error:" in done.stderr and "has no rows" in done.stderr, done.stderr[-3000:]
        assert not run.is_done("training")
        return
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("training", "training_mle_only", "evaluation"):
        assert run.is_done(stage), stage
    report = run.stage_dir("evaluation")
    for name in ("report.json", "report.md", "report.html"):
        assert (report / name).is_file(), name
    assert f"[run] report: {(report / 'report.html').resolve()}" in done.stdout
    assert set(read_json(report / "manifest.json")["models"]) == {"base", "mle_only", "ptalign"}

    # 3. And once more: every stage is already finished, nothing is redone.
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("synthesis", "refinement", "training", "training_mle_only", "evaluation"):
        assert f"[{stage}] already finished" in again.stdout, stage

    # 4. New data under the same config (`synthesize --force`): every downstream stage is redone,
    # none is taken as finished on the stale data (their hashes include the upstream publication).
    before = {
        s: (run.stage_dir(s) / "manifest.json").stat().st_mtime_ns for s in ("refinement", "training", "evaluation")
    }
    forced = subprocess.run(
        _ptalign("synthesize", "--force", "--config", str(config), "--run-dir", str(run.root)),
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr[-3000:]
    redo = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1500)
    assert redo.returncode == 0, redo.stdout[-3000:] + redo.stderr[-3000:]
    assert "[synthesis] already finished" in redo.stdout
    for stage in ("refinement", "training", "training_mle_only", "evaluation"):
        assert f"[{stage}] already finished" not in redo.stdout, stage
    for stage, mtime in before.items():
        assert (run.stage_dir(stage) / "manifest.json").stat().st_mtime_ns > mtime, stage
