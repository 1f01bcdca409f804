"""Resuming from checkpoints without Ray: strict weights, RNG files loadable with weights_only, fallback."""

from __future__ import annotations

import json
import random

import pytest
import torch

from ptalign_ray.training.trainer import (
    OPTIMIZER_FILE,
    STATE_FILE,
    TRAINABLE_FILE,
    CheckpointError,
    Progress,
    _rng_state,
    _set_rng_state,
    checkpoint_name,
    load_first_good,
    read_checkpoint,
)

KEYS = {"layer.lora_A.weight", "layer.lora_B.weight"}


def _write(folder, step: int, keys=KEYS):
    """A checkpoint folder as Worker.save writes it (rank 0 and rank 1 RNG files)."""
    folder.mkdir(parents=True)
    weights = {k: torch.full((2, 2), float(step)) for k in keys}
    param = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([param], lr=1e-3)
    param.grad = torch.ones(2)
    opt.step()
    torch.save(weights, folder / TRAINABLE_FILE)
    torch.save(opt.state_dict(), folder / OPTIMIZER_FILE)
    (folder / STATE_FILE).write_text(json.dumps({"step": step, "epoch": 0, "position": 4 * step, "history": []}))
    for rank in (0, 1):
        torch.save(_rng_state(), folder / f"rng_rank{rank}.pt")
    return folder


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    torch.save(_rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random())
    _set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))  # no pickled Python objects
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_read_checkpoint_returns_everything_a_rank_needs(tmp_path):
    d = _write(tmp_path / "step_4", 4)
    got = read_checkpoint(d, rank=1, trainable=KEYS)
    assert set(got["trainable"]) == KEYS and got["progress"] == Progress(step=4, position=16)
    assert got["rng"] is not None and "state" in got["optimizer"]
    assert read_checkpoint(d, rank=5, trainable=KEYS)["rng"] is None  # a rank the saved layout did not have


@pytest.mark.parametrize(
    "saved, match",
    [({"layer.lora_A.weight"}, "1 missing"), (KEYS | {"other.lora_A.weight"}, "1 unexpected")],
)
def test_read_checkpoint_refuses_other_trainable_weights(tmp_path, saved, match):
    d = _write(tmp_path / "step_4", 4, keys=saved)
    with pytest.raises(CheckpointError, match=match) as err:
        read_checkpoint(d, rank=0, trainable=KEYS)
    assert str(d) in str(err.value)


def test_read_checkpoint_names_the_folder_of_a_truncated_file(tmp_path):
    d = _write(tmp_path / "step_8", 8)
    data = (d / TRAINABLE_FILE).read_bytes()
    (d / TRAINABLE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable") as err:
        read_checkpoint(d, rank=0, trainable=KEYS)
    assert str(d) in str(err.value)


def _corrupt(folder):
    (folder / OPTIMIZER_FILE).write_bytes(b"not a checkpoint")
    return folder


def test_a_corrupt_newest_checkpoint_falls_back_to_the_older_one(tmp_path):
    newest = _corrupt(_write(tmp_path / "run" / "step_8", 8))
    older = _write(tmp_path / "run" / "step_4", 4)
    skipped, ckpt, loaded = load_first_good([newest, older], lambda d: read_checkpoint(d, 0, KEYS), lambda ok: ok)
    assert ckpt == older and loaded["progress"].step == 4
    assert len(skipped) == 1 and str(newest) in skipped[0]


def test_every_rank_takes_the_same_checkpoint(tmp_path):
    """Rank 0 reads the newest checkpoint, but another rank cannot: rank 0 falls back too."""
    newest, older = _write(tmp_path / "run" / "step_8", 8), _write(tmp_path / "run" / "step_4", 4)
    others_ok = {newest: False, older: True}
    tried = []

    def all_ok(ok):
        tried.append(ok)
        return ok and others_ok[[newest, older][len(tried) - 1]]

    skipped, ckpt, _ = load_first_good([newest, older], lambda d: read_checkpoint(d, 0, KEYS), all_ok)
    assert ckpt == older and tried == [True, True] and "another worker" in skipped[0]


def test_no_loadable_checkpoint_says_which_folders_and_how_to_start_over(tmp_path):
    newest = _corrupt(_write(tmp_path / "run" / "step_8", 8))
    older = _corrupt(_write(tmp_path / "run" / "step_4", 4))
    gone = tmp_path / "run" / "step_2"  # deleted by hand: reading fails with a plain OSError

    def read(d):
        if not d.exists():
            raise FileNotFoundError(d)
        return read_checkpoint(d, 0, KEYS)

    with pytest.raises(CheckpointError) as err:
        load_first_good([newest, older, gone], read, lambda ok: ok)
    msg = str(err.value)
    assert str(newest) in msg and str(older) in msg and str(gone) in msg
    assert f"delete the Ray Train run folder {tmp_path / 'run'}" in msg and "--force" in msg


def test_checkpoint_names_do_not_reuse_a_kept_folder():
    assert checkpoint_name(8, 4, final=False) == "step_0000008_from_0000004"
    assert checkpoint_name(15, 4, final=True) == "final_step_0000015"
    taken = {"step_0000008_from_0000004", "step_0000008_from_0000004_1"}
    assert checkpoint_name(8, 4, final=False, taken=taken) == "step_0000008_from_0000004_2"


def test_a_saved_folder_newer_than_ray_trains_latest_checkpoint_is_resumed_first(tmp_path, monkeypatch):
    """A worker whose node is lost after writing a checkpoint but before Ray Train's controller
    registered it leaves a newer folder than get_checkpoint()'s (or the only one): resume from it,
    not from step 0 (seen on a multi-node cluster, bench/node_loss.py)."""
    import ray.train

    from ptalign_ray.training import trainer

    root = tmp_path / "ray_train" / "training-abc"
    for name in ("step_0000002_from_0000000", "step_0000004_from_0000000", "step_0000006_from_0000000"):
        (root / name).mkdir(parents=True)
    (root / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray Train's own files are not checkpoints
    saved = trainer.saved_checkpoints(root)
    assert [trainer.step_of(p.rsplit("/", 1)[-1]) for p in saved] == [6, 4, 2]
    assert trainer.saved_checkpoints(tmp_path / "none") == [] and trainer.saved_checkpoints(None) == []

    older = ray.train.Checkpoint(str(tmp_path / "kept" / "step_0000001_from_0000000"))
    monkeypatch.setattr(trainer, "_kept_checkpoints", lambda: [older])
    latest = ray.train.Checkpoint(str(root / "step_0000004_from_0000000"))  # what Ray Train registered
    order = [trainer._folder(c).rsplit("/", 1)[-1] for c in trainer._newest_first(latest, saved)]
    assert order == ["step_0000006_from_0000000", "step_0000004_from_0000000", "step_0000002_from_0000000",
                     "step_0000001_from_0000000"]  # fmt: skip
    order = [trainer._folder(c).rsplit("/", 1)[-1] for c in trainer._newest_first(None, saved[2:])]
    assert order == ["step_0000002_from_0000000", "step_0000001_from_0000000"]  # Ray Train registered none
    assert trainer.step_of("final_step_0000015") == 15 and trainer.step_of("step_0000008_from_0000004_2") == 8
