"""Upstream identity: a re-published upstream stage changes what downstream stages hash."""

from __future__ import annotations

from ptalign_ray.artifacts import VARIANTS, stage_digest, training_stage, upstream_key
from ptalign_ray.config import PipelineConfig
from ptalign_ray.refinement.pipeline import config_hash as refinement_hash
from ptalign_ray.runs import RunDir, write_json_atomic
from ptalign_ray.seeds import load_seeds


def _publish(run: RunDir, stage: str, manifest: dict) -> None:
    with run.building(stage) as tmp:
        write_json_atomic(tmp / "manifest.json", manifest)


def test_resynthesis_with_the_same_config_changes_the_refinement_hash(tmp_path):
    run, cfg, seeds = RunDir(tmp_path / "run"), PipelineConfig(), load_seeds("default")
    _publish(run, "synthesis", {"stage": "synthesis", "config_hash": "abc", "wall_seconds": 10.0})
    first = refinement_hash(cfg, upstream_key(run, "synthesis"), seeds)
    assert refinement_hash(cfg, upstream_key(run, "synthesis"), seeds) == first  # a rerun that skips: stable
    run.clear("synthesis")  # `ptalign synthesize --force`: same config, new data and manifest
    _publish(run, "synthesis", {"stage": "synthesis", "config_hash": "abc", "wall_seconds": 11.5})
    assert refinement_hash(cfg, upstream_key(run, "synthesis"), seeds) != first


def test_stage_digest_of_a_missing_stage_is_empty(tmp_path):
    assert stage_digest(RunDir(tmp_path / "run"), "synthesis") == ""


def test_variants_are_declared_once():
    assert training_stage("ptalign") == "training" and training_stage("mle_only") == "training_mle_only"
    assert {v.api_name for v in VARIANTS.values()} == {"ptalign", "mle-only"}


def test_a_stage_whose_input_was_republished_is_redone_not_an_error(tmp_path):
    import pytest

    from ptalign_ray.runs import StageConfigMismatch, finished_stage

    run, said = RunDir(tmp_path / "run"), []
    _publish(run, "refinement", {"stage": "refinement", "config_hash": "h1", "upstream": {"synthesis": "a"}})
    assert finished_stage(run, "refinement", "h1", said.append, {"synthesis": "a"})["config_hash"] == "h1"
    with pytest.raises(StageConfigMismatch):  # same input, another config: the user must say --force
        finished_stage(run, "refinement", "h2", said.append, {"synthesis": "a"})
    assert finished_stage(run, "refinement", "h2", said.append, {"synthesis": "b"}) is None  # new input: redo
    assert not run.is_done("refinement") and "synthesis re-published" in said[-1]
