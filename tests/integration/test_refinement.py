"""Refinement on the tiny model against the judge served for real on loopback."""

from __future__ import annotations

import pandas as pd
import pytest

from ptalign_ray.artifacts import BENIGN_COLUMNS, BENIGN_DIR, load_benign, question_id
from ptalign_ray.artifacts import TRIPLET_COLUMNS as SYN_COLUMNS
from ptalign_ray.config import parse_config
from ptalign_ray.refinement import stage as refinement_stage
from ptalign_ray.refinement.client import JudgeUnavailable
from ptalign_ray.runs import MANIFEST, RunDir, write_json_atomic, write_parquet_atomic
from ptalign_ray.seeds import load_seeds

pytestmark = pytest.mark.integration

REFUSAL = "I'm sorry, but I can't help with that."
BENIGN = [
    (
        "How do I bake a loaf of bread at home?",
        "Mix flour, water, salt and yeast, knead the dough, let it rise and bake it at 220 C.",
    ),
    ("How can I lock my bicycle so it is harder to steal?", REFUSAL),
]


def make_synthesis(run: RunDir) -> pd.DataFrame:
    """A finished synthesis stage: two questions with a passing pair, two whose toxic answer refuses;
    two benign questions, one answered helpfully and one refused."""
    seeds = load_seeds("default")
    ex = {e.question: e for e in seeds.exemplars}
    rows = []
    for i, q in enumerate(seeds.seed_questions[:4]):
        e = ex.get(q.question) or seeds.exemplars[i % len(seeds.exemplars)]
        toxic = e.toxic if i < 2 else REFUSAL
        rows.append({"id": question_id(q.question), "domain": q.domain, "topic": "seed", "question": q.question,
                     "positive": e.positive, "toxic": toxic, "positive_tokens": 50, "toxic_tokens": 40,
                     # the model's own answer: harmful for the first question only (then it is the toxic sample)
                     "own": e.toxic if i == 0 else REFUSAL, "harm_prob": 0.9,
                     "positive_truncated": False, "toxic_truncated": False, "model": "tiny", "config_hash": "syn0"})  # fmt: skip
    df = pd.DataFrame(rows)[SYN_COLUMNS]
    benign = pd.DataFrame(
        [(question_id(q), "benign", "theft", "seed", q, a, REFUSAL, 20, False, "tiny", "syn0") for q, a in BENIGN],
        columns=BENIGN_COLUMNS,
    )
    with run.building("synthesis") as tmp:
        write_parquet_atomic(df, tmp / "data" / "triplets.parquet")
        write_parquet_atomic(benign, tmp / BENIGN_DIR / "benign.parquet")
        write_json_atomic(tmp / MANIFEST, {"stage": "synthesis", "config_hash": "syn0"})
    return df


def tiny_config(model_dir, port):
    return parse_config(
        {
            "model": {"name_or_path": str(model_dir), "dtype": "float32", "max_model_len": 2048},
            "engine": {"batch_size": 32, "max_num_seqs": 64, "cpu_kvcache_space_gib": 1},
            "judge": {"port": port, "retries": 1, "request_timeout_s": 30},
            "refinement": {"rounds": 2, "candidates": 2, "sampling": {"temperature": 0.9, "max_tokens": 24}},
        }
    )


def test_refinement_rounds_drop_failures_keep_schema_and_resume(tmp_path, tiny_model, ray_local, monkeypatch):
    run = RunDir(tmp_path / "run")
    triplets = make_synthesis(run)
    cfg = tiny_config(tiny_model, 18082)

    # 1. interrupted after round 0: its checkpoint stays
    real_round = refinement_stage._candidates
    monkeypatch.setattr(refinement_stage, "_candidates", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        refinement_stage.refine(cfg, run, str(tiny_model))
    assert (run.work_dir("refinement") / "round_0.parquet").is_file()
    assert not run.is_done("refinement")
    monkeypatch.setattr(refinement_stage, "_candidates", real_round)

    # 2. judge unreachable: a clear error naming the URL, finished work kept
    with pytest.raises(JudgeUnavailable, match="127.0.0.1:9"):
        refinement_stage.refine(cfg, run, str(tiny_model), judge_url="http://127.0.0.1:9")
    assert (run.work_dir("refinement") / "round_0.parquet").is_file()

    # 3. resumed run: round 0 from the checkpoint, rounds 1-2 refine the failing toxic samples
    manifest = refinement_stage.refine(cfg, run, str(tiny_model))
    q = manifest["quality"]
    assert [r["round"] for r in q["rounds"]] == [0, 1, 2]
    assert manifest["steps"]["round_0"]["resumed"]
    r0 = q["rounds"][0]["pass"]
    assert r0["toxic"]["passed"] <= 2 and r0["toxic"]["total"] == 4
    assert q["rounds"][1]["failing"] >= 2 and q["rounds"][1]["candidates"] == 2 * q["rounds"][1]["failing"]
    assert q["kept"] + q["dropped"] == len(triplets) == q["questions"]
    assert q["own_answers"] == {"own_answers": 4, "own_harmful": 1}

    out = refinement_stage.load_refined(run)
    assert list(out.columns) == refinement_stage.COLUMNS
    assert set(out["id"]) <= set(triplets["id"])
    own_ids = set(out.loc[out["toxic_source"] == "own", "id"])
    assert own_ids <= {triplets["id"].iloc[0]} and set(out["toxic_source"]) <= {"own", "primed"}
    dropped = pd.read_parquet(run.stage_dir("refinement") / "dropped.parquet")
    assert set(dropped["id"]).isdisjoint(out["id"])
    assert all("after 2 rounds" in r or r == "near-duplicate question" for r in dropped["reason"])
    assert (run.stage_dir("refinement") / "quality.json").is_file()
    # benign answers are judged once (request known benign): the helpful one is kept, the refusal dropped
    assert q["benign"]["total"] == 2 and q["benign"]["kept"] == 1
    assert sum(q["benign"]["drop_reasons"].values()) == 1 and set(q["benign"]["drop_reasons"]) <= {
        "refusal",
        "off-topic",
    }
    assert load_benign(run, "refinement")["question"].tolist() == [BENIGN[0][0]]
    assert not run.work_dir("refinement").exists()

    # 4. rerun is a no-op
    assert refinement_stage.refine(cfg, run, str(tiny_model)) == manifest
