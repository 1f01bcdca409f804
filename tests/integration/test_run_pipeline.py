"""`ptalign run` end to end on the tiny model, as a user and a crashing machine run it: SIGKILLed
(every process of it, Ray's workers and vLLM's engines included) inside synthesis, interrupted with
Ctrl-C inside evaluation, started again each time on the same run directory. Finished stages are never redone, sub-steps resume from their checkpoints, the run
completes with a report and a consistent directory, and one more run redoes nothing. The kills use
bench/chaos_kill.py's own functions (this is its short CI form: the bench kills at 10+ random points
of every stage, issue #13); one test so that the whole tiny pipeline runs once in CI, with two
restarts. That re-published upstream data redoes every later stage is checked on run_stage itself
(tests/unit/test_stages.py) and by the bench's reruns."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pipeline_config import free_port

from ptalign_ray.runs import RunDir, read_json

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos_kill  # noqa: E402

pytestmark = pytest.mark.integration

TRAINED = ("training",)
# The chaos bench's config without the MLE-only ablation: one training and two evaluated models per
# whole run keep this test inside CI's budget; the ablation's own stage, its evaluation and report
# are checked in test_training.py / test_evaluation.py, and the bench runs with it.
OVERRIDES = {**chaos_kill.MORE_DATA, "training": {"ablation_mle_only": False}}


def _ptalign(*args: str) -> list[str]:
    return [sys.executable, "-m", "ptalign_ray", *args]


def _check_readable(log: str) -> None:
    """Issue #14's bar for a log without a terminal: <= 300 lines, no line repeated more than 5 times
    (blank lines aside), i.e. no progress-bar dumps and no repeated Ray/vLLM warnings."""
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) <= 300, f"{len(lines)} lines"
    line, count = Counter(lines).most_common(1)[0]
    assert count <= 5, f"{count} times: {line[:200]}"


def _check_kill(kill: dict, stage: str, port: int) -> None:
    assert kill["stage_hit"] == stage, kill
    assert kill["survivors"] == [] and kill["ray_sessions"], kill  # nothing of the run outlives it
    assert kill["snapshot_problems"] == [], kill  # published stages and checkpoints intact at the kill
    assert chaos_kill.port_free(port), "the killed run's judge port is still taken"


# The whole pipeline on the tiny model (synthesis with its anchors, training, two models evaluated
# greedy + sampled under three judges), two restarts, and a run that redoes nothing.
@pytest.mark.timeout(3000)
def test_killed_and_interrupted_run_resumes_where_it_stopped_and_completes(tmp_path, tiny_model):
    port = free_port()
    config = chaos_kill.write_config(tmp_path / "tiny.yaml", tiny_model, port, OVERRIDES)
    run = RunDir(tmp_path / "run")
    args = _ptalign("run", "--config", str(config), "--run-dir", str(run.root))
    env = chaos_kill.run_env()

    # 1. SIGKILL inside synthesis, once its first sub-step checkpoint is written.
    topics = run.work_dir("synthesis") / "topics.json"
    attempt, kill = chaos_kill.kill_when(config, run, topics.is_file, tmp_path / "1-kill.log", timeout=1500)
    assert kill is not None, f"`ptalign run` ended (rc {attempt.proc.returncode}) before its topics checkpoint"
    _check_kill(kill, "synthesis", port)

    # 2. Again, interrupted with Ctrl-C inside evaluation once the base model's answers are
    # checkpointed: synthesis resumed its topics from their checkpoint, then refinement and training ran.
    base_answers = run.work_dir("evaluation") / "generations_base.json"
    log = tmp_path / "2-ctrl-c.log"
    attempt = chaos_kill.Attempt(config, run.root, log)
    try:
        while not base_answers.is_file() and attempt.proc.poll() is None:
            time.sleep(0.2)
        if attempt.proc.poll() is None:
            attempt.proc.send_signal(signal.SIGINT)
    finally:
        rc = attempt.finish(timeout=300)
    assert "synthesis/topics" in attempt.resumed, attempt.resumed
    assert run.is_done("synthesis") and run.is_done("refinement")
    if rc == 2 and run.manifest("refinement")["quality"]["kept"] == 0:
        # The random tiny model rarely writes a positive the judge accepts; with nothing to train
        # on, the run must stop at training with a clear error, finished stages kept.
        assert "ptalign: error:" in log.read_text() and "has no rows" in log.read_text()
        assert not run.is_done("training")
        pytest.skip("the tiny model's refinement kept no sample; nothing to train and evaluate")
    assert rc == 130, log.read_text()[-3000:]
    assert "interrupted; finished steps are kept" in log.read_text()
    assert run.is_done("training") and not run.is_done("evaluation")
    assert chaos_kill.port_free(port), "the interrupted run's judge port is still taken"
    synthesis_manifest = run.stage_dir("synthesis") / "manifest.json"
    before = synthesis_manifest.stat().st_mtime_ns

    # 3. Again: the finished stages are skipped, evaluation resumes with the base model's answers.
    final = chaos_kill.Attempt(config, run.root, tmp_path / "3-final.log")
    assert final.finish(timeout=1800) == 0, (tmp_path / "3-final.log").read_text()[-3000:]
    assert final.already == ["synthesis", "refinement", *TRAINED], final.already
    assert "evaluation/base" in final.resumed, final.resumed
    assert synthesis_manifest.stat().st_mtime_ns == before
    problems, facts = chaos_kill.check_run_dir(run, stages=chaos_kill.stages_of(config))
    assert problems == [], problems
    assert facts["rows"]["synthesis/data/triplets.parquet"] > 0
    report = run.stage_dir("evaluation")
    for name in ("report.json", "report.md", "report.html"):
        assert (report / name).is_file(), name
    assert f"[run] report: {(report / 'report.html').resolve()}" in (tmp_path / "3-final.log").read_text()
    _check_readable((tmp_path / "3-final.log").read_text())
    assert set(read_json(report / "manifest.json")["models"]) == {"base", "ptalign"}

    # 4. And once more: every stage is already finished, nothing is redone.
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("synthesis", "refinement", *TRAINED, "evaluation"):
        assert f"[{stage}] already finished" in again.stdout, stage
