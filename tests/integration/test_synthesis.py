"""The whole synthesis stage through real Ray Data + a vLLM-CPU engine actor on the tiny test model."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from ptalign_ray import artifacts
from ptalign_ray.config import parse_config
from ptalign_ray.dedup import rouge_l_f1, tokenize
from ptalign_ray.runs import RunDir
from ptalign_ray.synthesis import stage as synthesis_stage

pytestmark = pytest.mark.integration


def tiny_config(model_dir, **synthesis):
    syn = dict(
        topics_per_domain=4, topic_samples=1, max_topics_per_domain=2, questions_per_topic=3,
        benign_questions_per_topic=2, everyday_questions_per_domain=2, own_answers=True, benign_refusals=True,
        # the tiny model writes harmless "How can I fix the roof?" requests: a low bar lets the question
        # judge keep some as red-team, and its protective rule ("safely") still moves others to benign
        min_question_harm_prob=0.01,
        topic_sampling={"temperature": 0.9, "max_tokens": 60},
        question_sampling={"temperature": 0.9, "max_tokens": 80},
        positive_sampling={"temperature": 0.9, "max_tokens": 24},
        toxic_sampling={"temperature": 0.9, "max_tokens": 24},
    )  # fmt: skip
    syn.update(synthesis)
    return parse_config(
        {
            "model": {"name_or_path": str(model_dir), "dtype": "float32", "max_model_len": 2048},
            "engine": {"batch_size": 32, "max_num_seqs": 64, "cpu_kvcache_space_gib": 1},
            "synthesis": syn,
        }
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model, ray_local):
    cfg = tiny_config(tiny_model)
    run = RunDir(tmp_path_factory.mktemp("run"))
    manifest = synthesis_stage.synthesize(cfg, run, str(tiny_model))
    return cfg, run, manifest


def test_dataset_schema_and_counts(finished_run):
    cfg, run, manifest = finished_run
    df = artifacts.load_triplets(run)
    assert list(df.columns) == synthesis_stage.COLUMNS
    assert len(df) > 0 and df["id"].is_unique
    for col in ("domain", "topic", "question", "positive", "toxic"):
        assert (df[col].str.len() > 0).all(), col
    assert set(df["domain"]) <= {d for d in ["cybercrime", "violence", "weapons", "drugs", "fraud", "privacy",
                                             "hate", "self_harm", "misinformation", "theft"]}  # fmt: skip
    assert (df["positive_tokens"] <= 24).all() and (df["toxic_tokens"] <= 24).all()
    steps = manifest["steps"]
    assert steps["topics"]["rows"] == 10  # one brainstorm per domain
    assert manifest["counts"]["topics"] == steps["topics"]["topics_kept"] <= 10 * 2
    assert df.groupby("domain")["topic"].nunique().max() <= 2  # the per-domain cap, max_topics_per_domain
    q = steps["questions"]
    # a red-team and a benign list per topic, one everyday list per everyday subject of the seeds
    assert q["rows"] == 2 * manifest["counts"]["topics"] + 10
    sc = steps["screening"]
    screened = sc["by_kind"]
    dropped = sum(k.get("fragment", 0) + k.get("ambiguous", 0) for k in screened.values())
    kept = sc["questions_kept"] + sc["benign_questions_kept"] + sc["everyday_questions_kept"]
    assert (
        kept + dropped + q["near_duplicates_dropped"]
        == q["questions_parsed"]
        == sc["questions"] + q["near_duplicates_dropped"]
    )
    assert screened["red_team"]["red_team"] == sc["questions_kept"] > 0
    assert 0 <= screened["red_team"]["harmful_share"] <= 1 and screened["red_team"]["per_domain"]
    assert (df["harm_prob"] >= cfg.synthesis.min_question_harm_prob).all()
    # positive, toxic and the model's own answer per red-team question; an answer and a refusal per benign one
    assert steps["responses"]["rows"] == 3 * sc["questions_kept"] + 2 * (
        sc["benign_questions_kept"] + sc["everyday_questions_kept"]
    )
    assert (df["own"].str.len() > 0).all()
    assert manifest["counts"]["triplets"] == len(df)
    assert manifest["tokens"]["generated"] == sum(s.get("generated_tokens", 0) for s in steps.values())
    assert manifest["seeds"]["total"] < 50
    assert manifest["versions"]["ray"] == "2.60.0"


def test_answers_start_from_the_seed_openings(finished_run):
    from ptalign_ray.seeds import load_seeds

    _, run, _ = finished_run
    seeds = load_seeds("default")
    df = artifacts.load_triplets(run)
    for q, pos, tox in zip(df["question"], df["positive"], df["toxic"]):
        assert pos.startswith(seeds.opening_for(q, "positive"))
        assert tox.startswith(seeds.opening_for(q, "toxic"))


def test_benign_questions_and_answers_are_stored_apart(finished_run):
    _, run, manifest = finished_run
    benign = artifacts.load_benign(run)
    assert list(benign.columns) == artifacts.BENIGN_COLUMNS
    counts = manifest["counts"]
    assert len(benign) == counts["benign_answers"] + counts["everyday_answers"]
    assert (
        counts["benign_answers"] <= counts["benign_questions"]
        and counts["everyday_answers"] <= counts["everyday_questions"]
    )
    assert set(benign["kind"]) <= {"benign", "everyday"} and counts["everyday_answers"] > 0
    from ptalign_ray.seeds import load_seeds

    seeds = load_seeds("default")
    assert all(r.startswith(seeds.opening_for(q, "positive")) for q, r in zip(benign["question"], benign["refusal"]))
    assert (benign["response"].str.len() > 0).all() and (benign["response_tokens"] <= 24).all()
    assert not set(benign["question"]) & set(artifacts.load_triplets(run)["question"])  # deduplicated together


def test_questions_are_deduplicated(finished_run):
    cfg, run, _ = finished_run
    df = artifacts.load_triplets(run)
    toks = [tokenize(q) for q in df["question"]]
    worst = max((rouge_l_f1(a, b) for a, b in itertools.combinations(toks, 2)), default=0.0)
    assert worst < cfg.synthesis.dedup_threshold


def test_rerun_is_a_noop_and_force_is_required_for_a_new_config(finished_run, tiny_model):
    cfg, run, manifest = finished_run
    before = (run.stage_dir("synthesis") / "manifest.json").stat().st_mtime_ns
    assert synthesis_stage.synthesize(cfg, run, str(tiny_model)) == manifest
    assert (run.stage_dir("synthesis") / "manifest.json").stat().st_mtime_ns == before
    other = tiny_config(tiny_model, questions_per_topic=2)
    with pytest.raises(synthesis_stage.StageConfigMismatch, match="--force"):
        synthesis_stage.synthesize(other, run, str(tiny_model))


def test_interrupted_stage_resumes_from_checkpointed_steps(tmp_path, tiny_model, ray_local, monkeypatch):
    cfg = tiny_config(tiny_model, topics_per_domain=3)
    run = RunDir(tmp_path / "run")
    real = synthesis_stage._step_responses

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated Ctrl-C during the responses step")

    monkeypatch.setattr(synthesis_stage, "_step_responses", crash)
    with pytest.raises(KeyboardInterrupt):
        synthesis_stage.synthesize(cfg, run, str(tiny_model))
    assert not run.is_done("synthesis")
    assert not run.stage_dir("synthesis").exists()
    topics = pd.read_parquet(run.work_dir("synthesis") / "topics.parquet")
    questions = pd.read_parquet(run.work_dir("synthesis") / "questions.parquet")

    monkeypatch.setattr(synthesis_stage, "_step_responses", real)
    manifest = synthesis_stage.synthesize(cfg, run, str(tiny_model))
    assert manifest["steps"]["topics"]["resumed"] and manifest["steps"]["questions"]["resumed"]
    assert "resumed" not in manifest["steps"]["responses"]
    df = artifacts.load_triplets(run)
    assert set(df["question"]) <= set(questions["question"])
    assert manifest["counts"]["topics"] == len(topics)
    assert not run.work_dir("synthesis").exists()
