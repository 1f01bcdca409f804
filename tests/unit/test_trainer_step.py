"""The training step without Ray: schedule, per-rank rows, padding, gradient accumulation, MLE == HF loss."""

from __future__ import annotations

import pytest
import torch

from ptalign_ray.config import TrainingConfig
from ptalign_ray.training.data import encode_pair
from ptalign_ray.training.trainer import (
    Pair,
    Stepper,
    build_model,
    epoch_order,
    lr_at,
    pad_batch,
    step_rows,
    steps_per_epoch,
)


def test_learning_rate_schedule():
    assert lr_at(0.0, 1.0, 0.1) == 0.0
    assert lr_at(0.05, 1.0, 0.1) == pytest.approx(0.5)
    assert lr_at(0.1, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(0.55, 1.0, 0.1) == pytest.approx(0.5)
    assert lr_at(1.0, 1.0, 0.1) == pytest.approx(0.0)
    assert lr_at(0.3, 2.0, 0.0) < 2.0


@pytest.mark.parametrize("world", [1, 2, 3])
def test_step_rows_cover_each_epoch_once_with_equal_shares(world):
    n, per_step = 11, world * 2
    order = epoch_order(n, seed=0, epoch=1)
    assert sorted(order) == list(range(n)) and order == epoch_order(n, 0, 1) and order != epoch_order(n, 0, 2)
    seen, position, steps = [], 0, 0
    while position < n:
        shares = [step_rows(order, position, per_step, world, r) for r in range(world)]
        assert len({len(s[0]) for s in shares}) == 1  # same rows per rank -> same number of passes
        consumed = shares[0][1]
        unique = {i for s in shares for i in s[0]}
        assert set(order[position : position + consumed]) <= unique
        seen.extend(order[position : position + consumed])
        position += consumed
        steps += 1
    assert sorted(seen) == list(range(n)) and steps == steps_per_epoch(n, per_step)


def test_resume_position_is_valid_for_another_world_size():
    order = epoch_order(20, seed=3, epoch=0)
    # 2 workers consumed 8 rows; 4 workers continue with exactly the rest of the epoch.
    rest = []
    position = 8
    while position < 20:
        parts = [step_rows(order, position, 4 * 2, 4, r) for r in range(4)]
        rest.extend(i for p in parts for i in p[0])
        position += parts[0][1]
    assert set(rest) == set(order[8:])


def test_pad_batch():
    ids, attn, mask = pad_batch([[5, 6, 7], [8]], [[0, 1, 1], [0]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert attn.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert mask.tolist() == [[False, True, True], [False, False, False]]


def _pairs(tokenizer, n: int) -> list[Pair]:
    out = []
    for i in range(n):
        row = {"id": f"p{i}", "question": f"How do I paint the fence {i} times?",
               "positive": f"Ask a friend and read the manual {i} times first.",
               "toxic": f"1. How can I sell {i} old shoes quickly?"}  # fmt: skip
        enc = encode_pair(row, tokenizer, TrainingConfig())
        out.append(Pair(enc["id"], enc["pos_ids"], enc["pos_mask"], enc["tox_ids"], enc["tox_mask"]))
    return out


class _CaptureGrads:
    """Stands in for the optimizer: records the gradient instead of stepping."""

    def __init__(self, params):
        self.params, self.grads, self.param_groups = list(params), None, []

    def step(self):
        self.grads = [p.grad.detach().clone() for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def _stepper(model, batch_size: int, alpha: float) -> Stepper:
    tcfg = TrainingConfig(
        batch_size=batch_size, bf16=False, max_grad_norm=1e9, lora={"r": 8, "alpha": 16, "dropout": 0.0}
    )
    s = Stepper(model, tcfg, alpha=alpha, pad_id=0, device=torch.device("cpu"))
    s.optimizer = _CaptureGrads(p for p in model.parameters() if p.requires_grad)
    return s


@pytest.fixture(scope="module")
def lora_model(tiny_model):
    tcfg = TrainingConfig(lora={"r": 8, "alpha": 16, "dropout": 0.0})
    model = build_model(str(tiny_model), tcfg, torch.float32, seed=0)
    with torch.no_grad():  # non-zero LoRA B so every adapter weight gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_gradient_accumulation_gives_the_full_batch_gradient(lora_model, tiny_tokenizer, alpha):
    pairs = _pairs(tiny_tokenizer, 4)
    whole = _stepper(lora_model, batch_size=4, alpha=alpha)
    out_whole = whole.train_step(pairs, measure_toxic=True)
    micro = _stepper(lora_model, batch_size=1, alpha=alpha)  # 4 micro-batches of one pair
    out_micro = micro.train_step(pairs, measure_toxic=True)
    for key in ("mle", "ut", "toxic_prob", "pos_tokens", "tox_tokens"):
        assert out_micro[key] == pytest.approx(out_whole[key], rel=1e-5), key
    for a, b in zip(whole.optimizer.grads, micro.optimizer.grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in whole.optimizer.grads)


def test_mle_only_step_matches_the_plain_transformers_loss(lora_model, tiny_tokenizer):
    pairs = _pairs(tiny_tokenizer, 3)
    out = _stepper(lora_model, batch_size=3, alpha=0.0).train_step(pairs, measure_toxic=False)
    ids, attn, mask = pad_batch([p.pos_ids for p in pairs], [p.pos_mask for p in pairs], pad_id=0)
    with torch.no_grad():
        hf = lora_model(input_ids=ids, attention_mask=attn, labels=ids.masked_fill(~mask, -100)).loss
    assert out["mle"] == pytest.approx(float(hf), rel=1e-5)
    assert out["measured_toxic"] is False and out["tox_tokens"] == 0
