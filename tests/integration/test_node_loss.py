"""Node loss, the short CI form of bench/node_loss.py (issue #13): a real local multi-node Ray
cluster (a head with no CPUs for work and two 1-CPU worker nodes, each its own raylet), `ptalign
train` on the tiny model joined to it, and the node running the Ray Train worker SIGKILLed - every
process of it - once training has written a checkpoint. Ray Train must restart the worker on the
other node from that checkpoint (not step 0) and the stage must finish with every row trained
exactly once per epoch. The bench also loses the vLLM engine's node in synthesis and shows the
elastic worker range; they cost too much for CI."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml
from pipeline_config import free_port
from test_training import make_run

from ptalign_ray.runs import read_json

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos_kill  # noqa: E402
import node_loss  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.mark.timeout(900)
def test_training_resumes_from_its_checkpoint_on_another_node_when_its_node_is_lost(tmp_path, tiny_model, monkeypatch):
    port = free_port()
    cluster = node_loss.Cluster(Path(f"/tmp/ray-nl-{port}"), port)  # short: Ray's socket paths have a length limit
    for key, value in cluster.env.items():
        monkeypatch.setenv(key, value)  # `ptalign train` is a client of this cluster
    run = make_run(tmp_path / "run", n=32)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_model), "dtype": "float32", "max_model_len": 512},
        "training": {"lora": {"r": 8, "alpha": 16, "dropout": 0.0}, "learning_rate": 5e-3, "epochs": 2,
                     "batch_size": 2, "num_workers": 1, "report_every_steps": 2, "checkpoint_every_steps": 2,
                     "max_seq_len": 128, "holdout_fraction": 0.2, "warmup_ratio": 0.0, "bf16": False,
                     "max_failures": 2, "ablation_mle_only": False},
        "ray": {"address": cluster.address},
    }))  # fmt: skip
    log = tmp_path / "train.log"
    try:
        cluster.start_head()
        cluster.add_nodes({"node_a": 1, "node_b": 1})
        attempt = chaos_kill.Attempt(config, run.root, log, command="train")
        ready = lambda: bool(node_loss.checkpoints(run)) and bool(cluster.count(node_loss.TRAIN_WORKER))  # noqa: E731
        assert node_loss.wait_for(ready, attempt, 600), f"no checkpoint (rc {attempt.proc.poll()}): {attempt.last_line}"
        [host] = cluster.count(node_loss.TRAIN_WORKER)
        lost = cluster.lose(host)
        assert lost["survivors"] == [] and lost["processes_killed"] > 2, lost  # raylet, agents, the worker
        moved = node_loss.wait_for(lambda: bool(cluster.count(node_loss.TRAIN_WORKER)), attempt, 300)
        on = cluster.count(node_loss.TRAIN_WORKER)
        assert attempt.finish(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
    assert moved and host not in on, on  # the worker restarted on the node that was left
    problems, facts = node_loss.training_checks(run)
    assert problems == [], problems  # every row once per epoch, steps in order
    assert facts["resumed_from_steps"] and min(facts["resumed_from_steps"]) >= 2, facts  # from a checkpoint
    manifest = read_json(run.stage_dir("training") / "manifest.json")
    assert manifest["outputs"]["adapter"] and (run.stage_dir("training") / "adapter").is_dir()
