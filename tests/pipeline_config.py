"""The smallest whole-pipeline config on the tiny test model, shared by the `ptalign run` and
`ray job submit` tests."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_pipeline_config(model_dir: Path) -> dict:
    """Every stage at its smallest: a few questions, one refinement round, a few training steps,
    a handful of evaluation prompts with 8-token answers."""
    return {
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "max_model_len": 1024},
        "engine": {"batch_size": 32, "max_num_seqs": 64, "cpu_kvcache_space_gib": 1},
        "synthesis": {
            "topics_per_domain": 3, "topic_samples": 1, "max_topics_per_domain": 1, "questions_per_topic": 3,
            "benign_questions_per_topic": 1, "everyday_questions_per_domain": 1, "own_answers": True,
            "benign_refusals": True,
            "min_question_harm_prob": 0.01,  # the tiny model's harmless requests stand in for red-team ones
            "topic_sampling": {"temperature": 0.9, "max_tokens": 40},
            "question_sampling": {"temperature": 0.9, "max_tokens": 60},
            "positive_sampling": {"temperature": 0.9, "max_tokens": 16},
            "toxic_sampling": {"temperature": 0.9, "max_tokens": 16},
        },
        "judge": {"port": free_port(), "retries": 1, "request_timeout_s": 30},
        "refinement": {"rounds": 1, "candidates": 1, "sampling": {"temperature": 0.9, "max_tokens": 16}},
        "training": {
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "learning_rate": 5e-3, "epochs": 1, "batch_size": 2,
            "max_seq_len": 96, "holdout_fraction": 0.2, "warmup_ratio": 0.0, "bf16": False,
            "report_every_steps": 2, "checkpoint_every_steps": 50,
            "mix": {"red_team": 0.5, "benign": 0.25, "everyday": 0.25}, "recovery_fraction": 0.5,
            "ut_skip_openings": True,
        },
        "evaluation": {
            "sets": ["harmbench", "overrefusal"], "prompts_per_set": {"harmbench": 4, "overrefusal": 4},
            "sampling": {"temperature": 0.0, "max_tokens": 8}, "bootstrap_samples": 200,
        },
        "ray": {"num_cpus": 4},
    }  # fmt: skip
