"""`ptalign run` SIGKILLed at chosen points (every process of it, Ray's included), rerun each time on
the same run directory, finishes complete and consistent: the short CI form of bench/chaos_kill.py
(which kills at 10+ random points of every stage, issue #13), with the bench's own functions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pipeline_config import free_port

from ptalign_ray.runs import RunDir

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos_kill  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.mark.timeout(2400)
def test_run_killed_in_synthesis_and_evaluation_finishes_consistent(tmp_path, tiny_model):
    port = free_port()
    config = chaos_kill.write_config(tmp_path / "tiny.yaml", tiny_model, port, chaos_kill.MORE_DATA)
    run = RunDir(tmp_path / "run")
    points = {
        # synthesis: its first sub-step checkpoint is written, the rest is not
        "synthesis": lambda: (run.work_dir("synthesis") / "topics.json").is_file(),
        # evaluation: the base model's answers are checkpointed, the trained models' are not
        "evaluation": lambda: (run.work_dir("evaluation") / "generations_base.json").is_file(),
    }
    for k, (stage, ready) in enumerate(points.items()):
        log = tmp_path / f"attempt-{k}.log"
        attempt, kill = chaos_kill.kill_when(config, run, ready, log, timeout=1800)
        if kill is None and attempt.proc.returncode == 2 and run.manifest("refinement")["quality"]["kept"] == 0:
            # The random tiny model's refinement kept no sample: the run stops at training with a clear
            # error (test_run_pipeline.py checks it); the kill inside synthesis was checked above.
            assert "has no rows" in log.read_text()
            pytest.skip("the tiny model's refinement kept no sample; nothing to train and evaluate")
        assert kill is not None, f"`ptalign run` ended (rc {attempt.proc.returncode}) before the kill point in {stage}"
        assert kill["stage_hit"] == stage, kill
        assert kill["survivors"] == [] and kill["ray_sessions"], kill
        assert kill["snapshot_problems"] == [], kill
        assert chaos_kill.port_free(port), "the killed run's judge port is still taken"

    final = chaos_kill.Attempt(config, run.root, tmp_path / "final.log")
    assert final.finish(timeout=1800) == 0, (tmp_path / "final.log").read_text()[-3000:]
    assert final.already == ["synthesis", "refinement", "training", "training_mle_only"], final.already
    assert "evaluation/base" in final.resumed  # the base model's answers came from the checkpoint
    problems, facts = chaos_kill.check_run_dir(run)
    assert problems == [], problems
    assert facts["rows"]["synthesis/data/triplets.parquet"] > 0
