"""What `ptalign serve` serves from a run directory, checked before any engine starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptalign_ray.config import PipelineConfig, parse_config
from ptalign_ray.engine import serve_llm_config
from ptalign_ray.serving.plan import ServingPlanError, base_model_name, plan_serving

REPO = Path(__file__).resolve().parents[2]


def _stage(root: Path, stage: str, model: str, rank: int = 16, merged: bool = True) -> None:
    d = root / stage
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "adapter_config.json").write_text(json.dumps({"r": rank}))
    if merged:
        (d / "merged").mkdir()
        (d / "merged" / "config.json").write_text("{}")
    (d / "manifest.json").write_text(json.dumps({"stage": stage, "model": model}))


def _cfg(**serving) -> PipelineConfig:
    return parse_config({"model": {"name_or_path": "org/base-model"}, "serving": serving})


def test_lora_mode_one_engine_with_named_adapters(tmp_path):
    _stage(tmp_path, "training", "org/base-model", rank=8)
    _stage(tmp_path, "training_mle_only", "org/base-model", rank=32)
    plan = plan_serving(_cfg(mode="lora", models=["base", "ptalign", "mle_only"]), tmp_path, "/models/base")
    assert len(plan.engines) == 1 and plan.engines[0].model_id == "org/base-model"
    assert [a[0] for a in plan.engines[0].adapters] == ["ptalign", "mle-only"]
    assert plan.routes == {
        "org/base-model": "org/base-model",
        "ptalign": "org/base-model",
        "mle-only": "org/base-model",
    }
    assert plan.kinds["ptalign"] == "adapter" and plan.default_model == "ptalign"
    kwargs = serve_llm_config(
        "org/base-model", "/models/base", PipelineConfig().model, PipelineConfig().engine, {}, plan.engines[0].adapters
    )
    ek = kwargs["engine_kwargs"]
    assert ek["enable_lora"] and ek["max_lora_rank"] == 32 and ek["max_loras"] == 2
    assert ek["lora_modules"][0] == {
        "name": "ptalign",
        "path": str((tmp_path / "training" / "adapter").resolve()),
        "base_model_name": "org/base-model",
    }
    assert kwargs["deployment_config"]["ray_actor_options"]["num_cpus"] == 0  # CPU: the engine bundle holds the CPU


def test_merged_mode_one_engine_per_model(tmp_path):
    _stage(tmp_path, "training", "org/base-model")
    plan = plan_serving(_cfg(models=["ptalign", "base"]), tmp_path, "/models/base")
    assert [e.model_id for e in plan.engines] == ["ptalign", "org/base-model"]
    assert all(not e.adapters for e in plan.engines)
    assert plan.engines[0].weights == str((tmp_path / "training" / "merged").resolve())
    assert plan.kinds == {"ptalign": "merged", "org/base-model": "base"}


def test_the_dpo_model_is_served_like_the_other_variants(tmp_path):
    _stage(tmp_path, "training", "org/base-model")
    _stage(tmp_path, "training_dpo", "org/base-model")
    merged = plan_serving(_cfg(models=["ptalign", "dpo"]), tmp_path, "/models/base")
    assert [e.model_id for e in merged.engines] == ["ptalign", "dpo"] and merged.kinds["dpo"] == "merged"
    assert merged.engines[1].weights == str((tmp_path / "training_dpo" / "merged").resolve())
    lora = plan_serving(_cfg(mode="lora", models=["dpo"]), tmp_path, "/models/base")
    assert [a[0] for a in lora.engines[0].adapters] == ["dpo"] and lora.routes["dpo"] == "org/base-model"
    with pytest.raises(ServingPlanError, match="training.ablation_dpo"):
        plan_serving(_cfg(models=["dpo"]), tmp_path / "empty", "/m")


def test_missing_or_mismatched_training_is_an_error_that_says_what_to_do(tmp_path):
    with pytest.raises(ServingPlanError, match="ptalign train"):
        plan_serving(_cfg(), tmp_path, "/m")
    _stage(tmp_path, "training", "org/other-model")
    with pytest.raises(ServingPlanError, match="trained on model 'org/other-model'"):
        plan_serving(_cfg(), tmp_path, "/m")
    _stage(tmp_path / "b", "training", "org/base-model", merged=False)
    with pytest.raises(ServingPlanError, match="serving.mode: lora"):
        plan_serving(_cfg(), tmp_path / "b", "/m")
    with pytest.raises(ServingPlanError, match="mle_only"):
        plan_serving(_cfg(mode="lora", models=["mle_only"]), tmp_path / "b", "/m")


def test_base_model_names():
    assert base_model_name(PipelineConfig()) == "smollm2-135m-instruct"
    assert base_model_name(_cfg()) == "org/base-model"
    assert base_model_name(_cfg(base_model_name="base")) == "base"


@pytest.mark.parametrize("name", ["cpu.yaml", "gpu.yaml"])
def test_serving_yaml_args_build_a_valid_config(name):
    from ptalign_ray.config import load_config, merge_overrides

    data = yaml.safe_load((REPO / "serve_configs" / name).read_text())
    (app,) = data["applications"]
    assert app["import_path"] == "ptalign_ray.serving.app:app_builder"
    args = app["args"]
    assert set(args) <= {"run_dir", "config", "mode", "overrides"} and args["run_dir"]
    cfg = load_config(REPO / args["config"]) if args.get("config") else PipelineConfig()
    cfg = parse_config(merge_overrides(cfg.model_dump(mode="json"), args.get("overrides", {})))
    assert "api_key" not in json.dumps(args).replace("api_key_env", "")  # never a key in the YAML
    if name == "cpu.yaml":
        assert data["http_options"]["host"] == "127.0.0.1" and args["mode"] == "merged"
    else:
        assert args["mode"] == "lora" and cfg.serving.api_key_env and cfg.engine.tensor_parallel_size == 2
        assert cfg.serving.max_replicas > cfg.serving.min_replicas
