from pathlib import Path

import pytest

from ptalign_ray.config import ConfigError, PipelineConfig, TrainingConfig, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)


def test_default_config_is_the_embedded_cpu_default():
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert cfg.model.name_or_path == "embedded:smollm2-135m-instruct"
    assert cfg.engine.device == "cpu"
    assert cfg.serving.host == "127.0.0.1" and cfg.judge.host == "127.0.0.1"


def test_bad_enum_names_field_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        parse_config({"training": {"mask_mode": "tokens"}})
    msg = str(err.value)
    assert "training.mask_mode" in msg
    assert "'diff'" in msg and "'all'" in msg and "'judge'" in msg
    assert "'tokens'" in msg


def test_unknown_key_is_rejected_with_its_path():
    with pytest.raises(ConfigError) as err:
        parse_config({"synthesis": {"topics_per_domian": 3}})
    assert "synthesis.topics_per_domian" in str(err.value)
    assert "unknown key" in str(err.value)


def test_out_of_range_value_names_field():
    with pytest.raises(ConfigError) as err:
        parse_config({"synthesis": {"dedup_threshold": 1.5}})
    assert "synthesis.dedup_threshold" in str(err.value)


def test_autoscaling_pool_needs_min_le_max():
    assert parse_config({"engine": {"concurrency": [1, 4]}}).engine.concurrency == (1, 4)
    with pytest.raises(ConfigError, match="min <= max"):
        parse_config({"engine": {"concurrency": [4, 1]}})


def test_yaml_errors_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_section_hash_is_stable_and_sensitive():
    a, b = PipelineConfig(), PipelineConfig()
    assert a.section_hash("synthesis") == b.section_hash("synthesis")
    b.synthesis.questions_per_topic += 1
    assert a.section_hash("synthesis") != b.section_hash("synthesis")
    assert a.section_hash("training") == b.section_hash("training")


def test_judge_backend_is_a_module_of_the_judging_package():
    from ptalign_ray.config import JudgeConfig

    assert JudgeConfig(backend="llm").backend == "llm"
    with pytest.raises(ValueError, match="unknown judge backend 'guardian'"):
        JudgeConfig(backend="guardian")
    with pytest.raises(ConfigError, match="judge.backend"):
        parse_config({"judge": {"backend": "../etc"}})


def test_judge_deployments_take_resources_from_config():
    from ptalign_ray.config import JudgeConfig
    from ptalign_ray.judging.app import deployment_options

    opts = deployment_options(JudgeConfig(num_cpus=4, num_gpus=1, replicas=2))
    assert opts["num_replicas"] == 2 and opts["ray_actor_options"] == {"num_cpus": 4, "num_gpus": 1}
    assert deployment_options(JudgeConfig())["ray_actor_options"] == {"num_cpus": 1.0}
    # bounded work per replica: the rest waits in a bounded queue, beyond it Serve answers 503 at once
    opts = deployment_options(JudgeConfig(max_ongoing_requests=2, max_queued_requests=8))
    assert opts["max_ongoing_requests"] == 2 and opts["max_queued_requests"] == 8


def test_every_config_field_has_a_description():
    from ptalign_ray.config import config_fields

    fields = list(config_fields())
    paths = {path for path, _, _ in fields}
    # the walk reaches nested sections, optional sections and list items
    assert {"training.lora.r", "synthesis.topic_sampling.temperature", "judge.engine.device"} <= paths
    assert "evaluation.user_prompt_files[].kind" in paths
    missing = [path for path, field, _ in fields if not (field.description or "").strip()]
    assert not missing, f"config fields without a description: {missing}"


def test_config_fields_show_the_defaults_a_section_holds():
    from ptalign_ray.config import REQUIRED, config_fields

    defaults = {path: default for path, _, default in config_fields()}
    assert defaults["synthesis.topic_sampling.temperature"] == 0.3  # not SamplingConfig's own 0.7
    assert defaults["evaluation.sampling.max_tokens"] == 64
    assert defaults["judge.engine"] is None and defaults["judge.engine.device"] == "cpu"
    assert defaults["evaluation.user_prompt_files[].path"] is REQUIRED


def test_judge_beyond_loopback_is_an_explicit_choice():
    with pytest.raises(ConfigError, match="judge.allow_unauthenticated_remote"):
        parse_config({"judge": {"host": "0.0.0.0"}})
    assert parse_config({"judge": {"host": "0.0.0.0", "allow_unauthenticated_remote": True}}).judge.host == "0.0.0.0"


def test_training_seed_follows_the_top_level_seed_unless_set():
    assert PipelineConfig(seed=3).training.seed == 3
    assert PipelineConfig(seed=3, training={"epochs": 1}).training.seed == 3
    assert PipelineConfig(seed=3, training={"seed": 5}).training.seed == 5
    assert PipelineConfig().training.seed == 0


def _differences(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    elif a != b:
        yield path


def test_default_yaml_differs_from_the_code_defaults_only_where_its_header_says_why():
    """configs/default.yaml documents each group of fields it changes (sizes, learning rate, method);
    a new difference must be added to one of the groups below and to the file's header."""
    root = Path(__file__).resolve().parents[2]
    yaml_cfg = load_config(root / "configs/default.yaml").model_dump(mode="json")
    code = PipelineConfig().model_dump(mode="json")
    sizes = ("synthesis.", "refinement.", "evaluation.", "engine.max_num_seqs", "ray.num_cpus",
             "training.max_seq_len", "training.checkpoint_every_steps")  # fmt: skip
    method = ("synthesis.benign_", "synthesis.everyday_", "synthesis.own_answers", "training.mix",
              "training.recovery_fraction", "training.ut_skip_openings")  # fmt: skip
    lr = ("training.learning_rate", "training.warmup_ratio")
    undocumented = [p for p in _differences(code, yaml_cfg) if not p.startswith(sizes + method + lr)]
    assert undocumented == []


def test_elastic_workers_need_restarts_and_take_the_resize_interval():
    """Ray Train 2.60 shrinks an elastic group only by restarting it after the failure a lost node causes."""
    cfg = parse_config({"training": {"num_workers": [1, 4], "elastic_resize_interval_s": 5}})
    assert cfg.training.num_workers == (1, 4) and cfg.training.elastic_resize_interval_s == 5
    assert cfg.training.max_failures >= 1
    with pytest.raises(ConfigError) as e:
        parse_config({"training": {"num_workers": [1, 4], "max_failures": 0}})
    assert "training.max_failures >= 1" in str(e.value)
    assert parse_config({"training": {"num_workers": 2, "max_failures": 0}}).training.max_failures == 0  # fixed: ok
    described = TrainingConfig.model_fields["num_workers"].description
    assert "total resources" in described and "latest checkpoint" in described
