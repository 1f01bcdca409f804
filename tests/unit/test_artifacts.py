"""Upstream identity: a re-published upstream stage changes what downstream stages hash."""

from __future__ import annotations

from ptalign_ray.artifacts import MODEL_LABELS, VARIANTS, stage_digest, trained_variants, training_stage, upstream_key
from ptalign_ray.config import PipelineConfig, TrainingConfig, parse_config
from ptalign_ray.refinement.stage import config_hash as refinement_hash
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
    assert training_stage("dpo") == "training_dpo" and MODEL_LABELS["dpo"] == "DPO"
    assert {v.api_name for v in VARIANTS.values()} == {"ptalign", "mle-only", "dpo"}


def test_variants_the_main_job_trains_and_what_they_train():
    from ptalign_ray.training.stage import variant_training

    assert trained_variants(TrainingConfig()) == ["ptalign", "mle_only"]  # DPO is off by default
    assert trained_variants(TrainingConfig(ablation_mle_only=False, ablation_dpo=True)) == ["ptalign", "dpo"]
    cfg = parse_config({"training": {"objective": "dpo", "alpha": 2.0}})
    assert variant_training(cfg, "ptalign").objective == "dpo"  # training.objective selects the main model's
    assert (variant_training(cfg, "mle_only").objective, variant_training(cfg, "mle_only").alpha) == ("dual", 0.0)
    assert variant_training(parse_config({}), "dpo").objective == "dpo"


def test_training_hash_keys_only_the_fields_of_the_variant_s_objective():
    from ptalign_ray.training.stage import training_hash

    def key(variant, **training):
        return training_hash(parse_config({"training": training}), variant, "refinement", "h:d")

    for variant in ("ptalign", "mle_only"):  # DPO settings do not invalidate finished dual-loss stages
        assert key(variant) == key(variant, dpo_beta=0.5, ablation_dpo=True)
    assert key("ptalign") != key("ptalign", alpha=2.0)
    assert key("dpo") == key("dpo", alpha=2.0, mask_mode="all") != key("dpo", dpo_beta=0.5)
    assert len({key("ptalign"), key("mle_only"), key("dpo")}) == 3


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
