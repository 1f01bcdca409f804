"""Dual instruction tuning on Ray Train with 2 gloo workers on the tiny test model.

The "toxic" side of the test data is harmless text in the tiny model's own style (numbered lists of
requests), so the model starts out assigning it a high probability that unlikelihood can push down;
the "positive" side is a short sentence the model has never seen.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest

from ptalign_ray.config import parse_config
from ptalign_ray.runs import RunDir, write_json_atomic
from ptalign_ray.training import stage as training

pytestmark = pytest.mark.integration

POSITIVE = "I can help you plan this safely: ask a friend and read the manual first."
_VERBS = ["fix", "paint", "clean", "build", "move", "sell"]
_OBJECTS = ["the roof", "a garden", "the fence", "my bike", "wooden chairs", "a small boat"]


def _request(rng: random.Random) -> str:
    return f"How can I {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} quickly?"


def make_run(root, n: int = 24, seed: int = 0) -> RunDir:
    """A run directory holding a finished (hand-made) synthesis stage of n triplets."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        toxic = "\n".join(f"{k}. {_request(rng)}" for k in range(1, 4))
        rows.append(
            {"id": f"q{i:03d}", "domain": "test", "topic": "test", "question": f"{_request(rng)} (case {i})",
             "positive": POSITIVE, "toxic": toxic}
        )  # fmt: skip
    run = RunDir(root)
    with run.building("synthesis") as tmp:
        (tmp / "data").mkdir()
        pd.DataFrame(rows).to_parquet(tmp / "data" / "triplets.parquet")
        write_json_atomic(tmp / "manifest.json", {"stage": "synthesis", "config_hash": "hand-made"})
    return run


def tiny_config(model_dir, **training):
    t = dict(
        lora={"r": 8, "alpha": 16, "dropout": 0.0}, learning_rate=5e-3, epochs=3, batch_size=2, num_workers=2,
        report_every_steps=2, checkpoint_every_steps=4, max_seq_len=128, holdout_fraction=0.2, warmup_ratio=0.0,
        bf16=False, max_failures=1,
    )  # fmt: skip
    t.update(training)
    return parse_config(
        {
            "model": {"name_or_path": str(model_dir), "dtype": "float32", "max_model_len": 512},
            "engine": {"max_num_seqs": 8, "cpu_kvcache_space_gib": 1},
            "training": t,
        }
    )


def history(run: RunDir, stage: str = "training") -> list[dict]:
    lines = (run.stage_dir(stage) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model, ray_local):
    cfg = tiny_config(tiny_model)
    run = make_run(tmp_path_factory.mktemp("train") / "run")
    manifest = training.train_stage(cfg, run, str(tiny_model))
    return cfg, run, manifest


def test_loss_decreases_and_toxic_probability_falls(trained):
    cfg, run, manifest = trained
    train = [h for h in history(run) if "mle" in h]
    steps = [h["step"] for h in train]
    assert steps == sorted(set(steps)) and steps[-1] == manifest["steps"] == 15  # 19 pairs / 4 per step * 3
    first, last = train[0], train[-1]
    assert last["mle"] < first["mle"]
    assert last["toxic_prob"] < 0.5 * first["toxic_prob"]
    assert last["ut"] < first["ut"]
    m = manifest["metrics"]
    assert m["holdout_after"]["holdout_toxic_prob"] < m["holdout_before"]["holdout_toxic_prob"]
    assert m["holdout_after"]["holdout_mle"] < m["holdout_before"]["holdout_mle"]
    for h in train:
        assert h["tokens_per_s"] > 0 and h["supervised_tokens"] == h["pos_tokens"] + h["tox_tokens"] > 0
        assert 0 <= h["lr"] <= cfg.training.learning_rate and h["world_size"] == 2


def test_outputs_and_manifest(trained):
    cfg, run, manifest = trained
    out = run.stage_dir("training")
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "config.json").is_file() and (out / "merged" / "tokenizer_config.json").is_file()
    d = manifest["data"]
    assert d["rows"] == 24 and d["train_pairs"] == 19 and d["holdout_pairs"] == 5
    assert manifest["samples_seen"] == 3 * 19 and manifest["alpha"] == 1.0 and manifest["mask_mode"] == "diff"
    assert manifest["source"]["stage"] == "synthesis"
    assert not run.work_dir("training").exists()  # checkpoints are removed once the stage is finished
    budget = manifest["time_budget"]  # where the fit's wall time went, measured on the worker too
    parts = ("prepare_s", "worker_start_s", "setup_s", "holdout_s", "steps_s", "checkpoint_s", "other_s")
    assert all(budget[k] >= 0 for k in parts if k != "other_s") and budget["worker_start_s"] > 0
    assert budget["holdout_s"] > 0 and budget["checkpoint_s"] > 0  # 5 held-out pairs; a mid-run checkpoint
    assert abs(sum(budget[k] for k in parts) - budget["fit_s"]) < 0.05 and budget["merge_s"] > 0

    # The merged weights compute what base + adapter computes.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 319, 201, 293, 342, 276, 2, 201, 1, 313, 201]])
    base = AutoModelForCausalLM.from_pretrained(manifest["model_path"], dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(peft(ids).logits, merged(ids).logits, atol=1e-4)


def test_tokenising_on_ray_data_and_in_process_give_the_same_rows(trained, tiny_model):
    """Rows that fit one batch are encoded in the driver; more fan out over Ray Data. Same rows either way."""
    from ptalign_ray.training.data import prepare_training_data

    cfg, run, _ = trained
    here = prepare_training_data(run, str(tiny_model), cfg.training, log=lambda _: None)
    fanned = prepare_training_data(run, str(tiny_model), cfg.training, log=lambda _: None, encode_batch_rows=5)
    assert here.stats == fanned.stats and here.stats["kept"] == 24
    for name in ("train", "holdout"):
        a, b = (getattr(d, name).to_pandas().sort_values("id").reset_index(drop=True) for d in (here, fanned))
        pd.testing.assert_frame_equal(a, b, check_dtype=False)  # Ray Data hands strings back as Arrow strings


def test_rerun_is_a_noop_and_a_new_config_needs_force(trained, tiny_model):
    cfg, run, manifest = trained
    path = run.stage_dir("training") / "manifest.json"
    before = path.stat().st_mtime_ns
    assert training.train_stage(cfg, run, str(tiny_model)) == manifest
    assert path.stat().st_mtime_ns == before
    with pytest.raises(training.StageConfigMismatch, match="--force"):
        training.train_stage(tiny_config(tiny_model, learning_rate=1e-3), run, str(tiny_model))


def test_mle_only_ablation_trains_into_its_own_stage_and_keeps_toxic_tokens_likelier(trained, tiny_model):
    cfg, run, manifest = trained
    ablation = training.train_stage(cfg, run, str(tiny_model), variant="mle_only")
    assert ablation["stage"] == "training_mle_only" and ablation["alpha"] == 0.0
    assert (run.stage_dir("training_mle_only") / "adapter" / "adapter_config.json").is_file()
    assert run.manifest("training") == manifest  # the PT-ALIGN stage is untouched
    train = [h for h in history(run, "training_mle_only") if "mle" in h]
    assert train[-1]["mle"] < train[0]["mle"]
    assert all(h["supervised_tokens"] == h["pos_tokens"] for h in train)  # UT measured, never trained on
    after = lambda m: m["metrics"]["holdout_after"]["holdout_toxic_prob"]  # noqa: E731
    assert after(manifest) < after(ablation)


def test_dpo_trains_on_ray_train_into_its_own_stage(trained, tiny_model):
    """The DPO objective through the same Ray Train loop (2 workers, one epoch): the reference is the base
    model, so before any step the policy equals it (loss ln 2, rewards 0); training opens a reward margin."""
    cfg, run, manifest = trained
    dpo = training.train_stage(tiny_config(tiny_model, epochs=1), run, str(tiny_model), variant="dpo")
    assert dpo["stage"] == "training_dpo" and dpo["objective"]["name"] == "dpo"
    assert dpo["objective"]["params"] == {"beta": 0.1} and dpo["alpha"] is None
    assert dpo["data"]["dropped_no_rejected"] == 0 and dpo["data"]["train_pairs"] == 19
    assert (run.stage_dir("training_dpo") / "merged" / "config.json").is_file()
    assert run.manifest("training") == manifest  # the PT-ALIGN stage is untouched
    before = dpo["metrics"]["holdout_before"]
    assert before["holdout_loss"] == pytest.approx(math.log(2), abs=1e-4) and before[
        "holdout_reward_margin"
    ] == pytest.approx(0, abs=1e-6)
    train = [h for h in history(run, "training_dpo") if "loss" in h]
    assert train[-1]["step"] == 5 and train[-1]["loss"] < math.log(2) and train[-1]["reward_margin"] > 0
    assert all(h["supervised_tokens"] == h["pos_tokens"] + h["tox_tokens"] and h["pairs"] > 0 for h in train)
    lines: list[str] = []
    training.print_training_summary(dpo, lines.append)
    assert any("reward accuracy" in line for line in lines)


def test_adapter_loads_into_vllm_and_changes_greedy_output(trained, tiny_model):
    from ptalign_ray.chat_template import load_tokenizer, render_ids
    from ptalign_ray.engine import direct_generate, direct_llm, lora_request
    from ptalign_ray.training.data import training_prompt

    cfg, run, manifest = trained
    tok = load_tokenizer(str(tiny_model))
    questions = ["How can I paint the fence quickly?", "Where can I sell my bike on a budget?"]
    prompts = [render_ids(tok, training_prompt(q)) for q in questions]
    params = [{"temperature": 0.0, "max_tokens": 20}] * len(prompts)
    llm = direct_llm(str(tiny_model), cfg.model, cfg.engine, lora_rank=cfg.training.lora.r)
    try:
        base = [text for text, _ in direct_generate(llm, prompts, params)]
        tuned = [
            text
            for text, _ in direct_generate(
                llm, prompts, params, lora=lora_request(run.stage_dir("training") / "adapter")
            )
        ]
    finally:
        del llm
    assert all(b.lstrip().startswith("1.") for b in base)  # the tiny model's numbered request lists
    assert base != tuned
    # vLLM applied this very adapter: its greedy output is that of the merged weights in transformers.
    import torch
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(run.stage_dir("training") / "merged", dtype=torch.float32)
    for ids, text in zip(prompts, tuned):
        out = merged.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
        assert tok.decode(out[0][len(ids) :], skip_special_tokens=True).strip() == text.strip()


def test_worker_killed_mid_run_resumes_at_the_checkpointed_step(tmp_path, tiny_model, ray_local, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(training.FAIL_ENV, f"7:{marker}")  # rank 1 exits at step 7; last checkpoint: step 4
    cfg = tiny_config(tiny_model)
    run = make_run(tmp_path / "run")
    manifest = training.train_stage(cfg, run, str(tiny_model))
    assert marker.is_file()  # the worker really died once

    records = history(run)
    steps = [h["step"] for h in records]
    resumed = [h["resumed_from_step"] for h in records]
    # Attempt 1 reported steps 0, 2, 4 (checkpoint at 4) and died at 7; what it reported after the
    # checkpoint is not part of the resumed state. Attempt 2 continues at step 5, not at step 0.
    assert steps == [0, 2, 4, 5, 6, 8, 10, 12, 14, 15]
    assert resumed == [0, 0, 0, 4, 4, 4, 4, 4, 4, 4]
    assert manifest["steps"] == 15 and manifest["samples_seen"] == 3 * 19  # no row trained twice
    assert manifest["metrics"]["resumed_from_steps"] == [4]
    train = [h for h in records if "mle" in h]
    assert train[-1]["mle"] < train[0]["mle"]


def test_a_failed_stage_started_again_resumes_from_its_newest_intact_checkpoint(
    tmp_path, tiny_model, ray_local, monkeypatch
):
    """A `ptalign train` whose Ray Train run failed for good (no retries left) is started again by the
    user: it resumes from its checkpoints, not from step 0 - here from the step-4 one, because the
    newest (step 8) was left corrupt (e.g. the disk filled up while it was written)."""
    from ray.train import Result, TrainingFailedError

    cfg = tiny_config(tiny_model, max_failures=0)
    run = make_run(tmp_path / "run")
    monkeypatch.setenv(training.FAIL_ENV, f"11:{tmp_path / 'killed'}")  # after the checkpoints at steps 4 and 8
    with pytest.raises(TrainingFailedError):
        training.train_stage(cfg, run, str(tiny_model))  # no retries left: the `ptalign train` run fails
    assert not run.is_done("training") and run.work_dir("training").is_dir()
    [newest] = run.work_dir("training").glob("ray_train/*/step_0000008_*")
    assert Path(Result.from_path(newest.parent).checkpoint.path) == newest  # what get_checkpoint() will return
    (newest / "optimizer.pt").write_bytes(b"truncated")

    monkeypatch.delenv(training.FAIL_ENV)
    manifest = training.train_stage(cfg, run, str(tiny_model))  # every rank falls back to the step-4 checkpoint
    records = history(run)
    assert [h["step"] for h in records] == [0, 2, 4, 5, 6, 8, 10, 12, 14, 15]
    assert [h["resumed_from_step"] for h in records] == [0, 0, 0] + [4] * 7
    assert manifest["steps"] == 15 and manifest["samples_seen"] == 3 * 19
