"""The dual loss against hand computation, its numerics, and its invariance to batch sharding."""

from __future__ import annotations

import math

import pytest
import torch

from ptalign_ray.chat_template import EncodedExample
from ptalign_ray.training.loss import (
    DualLossOutput,
    dual_loss,
    log_one_minus_p,
    next_token_logprobs,
    shift_mask,
)
from ptalign_ray.training.masks import mle_targets, ut_targets

LN2 = math.log(2.0)
SPECIAL = frozenset({0, 1, 2, 3})  # pad, bos, role start, end-of-turn


def _ln(values) -> torch.Tensor:
    return torch.log(torch.tensor(values, dtype=torch.float64)).float()


# ---------------------------------------------------------------- next_token_logprobs / shift_mask


def test_next_token_logprobs_exact_on_known_distribution():
    probs = [0.5, 0.25, 0.125, 0.125]
    logits = _ln([probs, probs, probs]).unsqueeze(0)  # [1, 3, 4]: softmax(log p) == p
    input_ids = torch.tensor([[3, 0, 1]])  # targets: token 0 (p=0.5), token 1 (p=0.25)
    out = next_token_logprobs(logits, input_ids)
    assert out.shape == (1, 2) and out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[-LN2, -2 * LN2]]), atol=1e-6)


def test_next_token_logprobs_matches_log_softmax_and_upcasts_bf16():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 13)
    ids = torch.randint(0, 13, (3, 7))
    ref = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert torch.allclose(next_token_logprobs(logits, ids).double(), ref, atol=1e-5)
    bf16 = next_token_logprobs(logits.bfloat16(), ids)
    assert bf16.dtype == torch.float32
    ref_bf16 = torch.log_softmax(logits.bfloat16()[:, :-1].double(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert torch.allclose(bf16.double(), ref_bf16, atol=1e-5)


def test_next_token_logprobs_rejects_bad_shapes():
    with pytest.raises(ValueError):
        next_token_logprobs(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))


def test_shift_mask_moves_targets_one_left():
    mask = torch.tensor([[False, False, True, True, False]])
    assert shift_mask(mask).tolist() == [[False, True, True, False]]
    with pytest.raises(ValueError, match="token 0"):
        shift_mask(torch.tensor([[True, True, False]]))


# ---------------------------------------------------------------- log_one_minus_p


def test_log_one_minus_p_accurate_near_one_and_zero():
    near_one = [math.log1p(-(10.0**-k)) for k in range(1, 5)]  # p = 0.9 .. 0.9999
    near_zero = [-1.0, -5.0, -20.0, -50.0, -80.0]  # p down to 1.8e-35
    middle = [-LN2 - 1e-3, -LN2, -LN2 + 1e-3]
    logp = torch.tensor(near_one + middle + near_zero, dtype=torch.float32)
    got = log_one_minus_p(logp)
    # float64 reference from the very same inputs (each formula used where it is exact in float64).
    ref = torch.tensor(
        [math.log(-math.expm1(x)) if x > -LN2 else math.log1p(-math.exp(x)) for x in logp.double().tolist()],
        dtype=torch.float64,
    )
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), ref, rtol=2e-6, atol=0.0)


def test_log_one_minus_p_clamps_and_has_finite_gradients():
    floor = math.log(1e-5)
    logp = torch.tensor([0.0, 1e-6, -1e-8, -1e-3, -LN2, -30.0, float("-inf")], requires_grad=True)
    out = log_one_minus_p(logp, min_prob=1e-5)
    assert torch.isfinite(out).all()
    assert (out >= floor - 1e-6).all()
    assert torch.allclose(out[:3], torch.full((3,), floor), atol=1e-4)  # p >= 1 - 1e-5 is clamped
    assert out[-1].item() == 0.0  # p = 0 -> log 1
    out.sum().backward()
    assert torch.isfinite(logp.grad).all()
    # d/dlogp log(1 - p) = -p / (1 - p); at p = 1/2 that is -1, at p = e^-30 it is ~0.
    assert logp.grad[4].item() == pytest.approx(-1.0, rel=1e-5)
    assert abs(logp.grad[5].item()) < 1e-12


# ---------------------------------------------------------------- dual_loss: hand computation


def test_dual_loss_hand_computed():
    pos_logp = _ln([[0.5, 0.25, 0.125]])
    pos_mask = torch.tensor([[1, 1, 0]])
    tox_logp = _ln([[0.5, 0.75, 0.25]])
    tox_mask = torch.tensor([[True, False, True]])
    out = dual_loss(pos_logp, pos_mask, tox_logp, tox_mask, alpha=2.0, pos_tokens_global=2, tox_tokens_global=2)
    assert isinstance(out, DualLossOutput)
    mle = (LN2 + 2 * LN2) / 2  # -(ln 1/2 + ln 1/4) / 2
    ut = (LN2 + math.log(4 / 3)) / 2  # -(ln(1 - 1/2) + ln(1 - 1/4)) / 2
    assert out.mle.item() == pytest.approx(mle, rel=1e-6)
    assert out.ut.item() == pytest.approx(ut, rel=1e-6)
    assert out.loss.item() == pytest.approx(mle + 2.0 * ut, rel=1e-6)
    assert out.toxic_prob_mean.item() == pytest.approx((0.5 + 0.25) / 2, rel=1e-6)
    assert (out.pos_tokens, out.tox_tokens) == (2, 2)


def _pair():
    # ids: 0 pad, 1 bos, 2 role start, 3 end-of-turn; 10 a prompt token; 20.. response tokens.
    toxic = EncodedExample([1, 10, 2, 20, 21, 22, 23, 3, 0], prompt_len=3, response_start=3, response_end=7, n_end=1)
    positive = EncodedExample([1, 10, 2, 20, 30, 23, 3, 0, 0], prompt_len=3, response_start=3, response_end=6, n_end=1)
    return toxic, positive


def _shifted_logp(n_tokens: int, probs_at: dict[int, float]) -> torch.Tensor:
    """Log-probs aligned with shifted targets: the token at input position i sits at index i - 1."""
    probs = [0.1] * (n_tokens - 1)
    for i, p in probs_at.items():
        probs[i - 1] = p
    return _ln([probs])


# Toxic token probabilities (input positions 3..6): 1 - p = 1/2, 1/4, 3/4, 1/8.
TOX_P = {3: 0.5, 4: 0.75, 5: 0.25, 6: 0.875}
# Positive target probabilities (positions 3..6, the last is end-of-turn): 1/2, 1/4, 1/2, 1/8.
POS_P = {3: 0.5, 4: 0.25, 5: 0.5, 6: 0.125}
MLE_HAND = (LN2 + 2 * LN2 + LN2 + 3 * LN2) / 4
UT_HAND = {
    "all": (LN2 + 2 * LN2 + math.log(4 / 3) + 3 * LN2) / 4,  # positions 3, 4, 5, 6
    "diff": (2 * LN2 + math.log(4 / 3)) / 2,  # 21, 22 (20 and 23 also occur in the positive)
    "judge": (math.log(4 / 3) + 3 * LN2) / 2,  # span (2, 4) -> positions 5, 6
}


@pytest.mark.parametrize("mode", ["all", "diff", "judge"])
def test_dual_loss_hand_computed_per_mask_mode(mode):
    toxic, positive = _pair()
    pos_mask = shift_mask(torch.tensor([mle_targets(positive)]))
    spans = [(2, 4)] if mode == "judge" else None
    tox_mask = shift_mask(torch.tensor([ut_targets(toxic, positive, mode, spans, SPECIAL)]))
    pos_logp = _shifted_logp(len(positive.input_ids), POS_P)
    tox_logp = _shifted_logp(len(toxic.input_ids), TOX_P)
    out = dual_loss(
        pos_logp,
        pos_mask,
        tox_logp,
        tox_mask,
        alpha=1.0,
        pos_tokens_global=int(pos_mask.sum()),
        tox_tokens_global=int(tox_mask.sum()),
    )
    assert out.mle.item() == pytest.approx(MLE_HAND, rel=1e-6)
    assert out.ut.item() == pytest.approx(UT_HAND[mode], rel=1e-6)
    assert out.loss.item() == pytest.approx(MLE_HAND + UT_HAND[mode], rel=1e-6)


# ---------------------------------------------------------------- dual_loss: sharding invariance


def _random_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    b, t, v = 5, 8, 11
    pos_logits = torch.randn(b, t, v, generator=g)
    tox_logits = torch.randn(b, t + 2, v, generator=g)
    pos_ids = torch.randint(0, v, (b, t), generator=g)
    tox_ids = torch.randint(0, v, (b, t + 2), generator=g)
    pos_mask = torch.rand(b, t - 1, generator=g) < 0.6
    tox_mask = torch.rand(b, t + 1, generator=g) < 0.4
    pos_mask[:, 0] = True  # every row has some targets, in uneven numbers
    tox_mask[:, -1] = True
    return pos_logits, pos_ids, pos_mask, tox_logits, tox_ids, tox_mask


def _loss_and_grads(pos_logits, pos_ids, pos_mask, tox_logits, tox_ids, tox_mask, alpha, n_pos, n_tox):
    pos_logits = pos_logits.clone().requires_grad_(True)
    tox_logits = tox_logits.clone().requires_grad_(True)
    out = dual_loss(
        next_token_logprobs(pos_logits, pos_ids),
        pos_mask,
        next_token_logprobs(tox_logits, tox_ids),
        tox_mask,
        alpha,
        n_pos,
        n_tox,
    )
    g_pos, g_tox = torch.autograd.grad(out.loss, [pos_logits, tox_logits], allow_unused=True)
    g_tox = torch.zeros_like(tox_logits) if g_tox is None else g_tox
    return out, g_pos, g_tox


@pytest.mark.parametrize("alpha", [1.0, 0.3, 0.0])
def test_sum_of_shard_losses_equals_full_batch(alpha):
    pos_logits, pos_ids, pos_mask, tox_logits, tox_ids, tox_mask = _random_batch(0)
    n_pos, n_tox = int(pos_mask.sum()), int(tox_mask.sum())  # what the all-reduce would give
    full, g_pos, g_tox = _loss_and_grads(
        pos_logits, pos_ids, pos_mask, tox_logits, tox_ids, tox_mask, alpha, n_pos, n_tox
    )

    shard_loss, shard_mle, shard_ut, g_pos_parts, g_tox_parts = 0.0, 0.0, 0.0, [], []
    for rows in (slice(0, 2), slice(2, 5)):  # two "workers" with uneven shards
        out, gp, gt = _loss_and_grads(
            pos_logits[rows],
            pos_ids[rows],
            pos_mask[rows],
            tox_logits[rows],
            tox_ids[rows],
            tox_mask[rows],
            alpha,
            n_pos,
            n_tox,
        )
        shard_loss += out.loss.item()
        shard_mle += out.mle.item()
        shard_ut += out.ut.item()
        g_pos_parts.append(gp)
        g_tox_parts.append(gt)

    assert shard_loss == pytest.approx(full.loss.item(), rel=1e-5)
    assert shard_mle == pytest.approx(full.mle.item(), rel=1e-5)
    assert shard_ut == pytest.approx(full.ut.item(), rel=1e-5)
    assert torch.allclose(torch.cat(g_pos_parts), g_pos, atol=1e-7)
    assert torch.allclose(torch.cat(g_tox_parts), g_tox, atol=1e-7)


def test_local_normalisation_would_not_be_shard_invariant():
    """Sanity check that the sharding test above can fail: per-shard means differ from the global mean."""
    pos_logits, pos_ids, pos_mask, *_ = _random_batch(0)
    logp = next_token_logprobs(pos_logits, pos_ids)
    full = -(logp * pos_mask).sum() / pos_mask.sum()
    per_shard = [-(logp[r] * pos_mask[r]).sum() / pos_mask[r].sum() for r in (slice(0, 2), slice(2, 5))]
    assert abs((sum(per_shard) / 2).item() - full.item()) > 1e-4


# ---------------------------------------------------------------- dual_loss: UT gradient, alpha=0, guards


def test_ut_gradient_lowers_toxic_token_and_vanishes_as_p_goes_to_zero():
    grads = []
    probs = [0.9, 0.5, 0.1, 0.01, 0.001]
    for p in probs:
        # Vocabulary {0, 1}; position 0 predicts the toxic token 0 with probability p.
        logits = _ln([[[p, 1 - p], [0.5, 0.5]]]).requires_grad_(True)
        ids = torch.tensor([[1, 0]])
        logp = next_token_logprobs(logits, ids)
        out = dual_loss(
            torch.zeros(1, 1),
            torch.zeros(1, 1, dtype=torch.bool),  # no positive tokens: contributes 0
            logp,
            torch.ones(1, 1, dtype=torch.bool),
            alpha=1.0,
            pos_tokens_global=0,
            tox_tokens_global=1,
        )
        (g,) = torch.autograd.grad(out.loss, [logits])
        grads.append(g[0, 0, 0].item())
        # d/dz_k of -log(1 - softmax(z)_k) = p exactly: positive, so descent lowers z_k and p.
        assert g[0, 0, 0].item() == pytest.approx(p, rel=1e-4)
        assert g[0, 0, 1].item() == pytest.approx(-p, rel=1e-4)
    assert all(a > b > 0 for a, b in zip(grads, grads[1:]))


def test_alpha_zero_is_plain_mle_and_still_reports_ut():
    pos_logits, pos_ids, pos_mask, tox_logits, tox_ids, tox_mask = _random_batch(1)
    pos_logp = next_token_logprobs(pos_logits.requires_grad_(True), pos_ids)
    tox_logp = next_token_logprobs(tox_logits.requires_grad_(True), tox_ids)
    n_pos, n_tox = int(pos_mask.sum()), int(tox_mask.sum())
    out0 = dual_loss(pos_logp, pos_mask, tox_logp, tox_mask, 0.0, n_pos, n_tox)
    out1 = dual_loss(pos_logp, pos_mask, tox_logp, tox_mask, 1.0, n_pos, n_tox)
    plain_mle = -(pos_logp * pos_mask).sum() / n_pos
    assert torch.allclose(out0.loss, plain_mle)
    assert out0.ut.item() == pytest.approx(out1.ut.item()) and out0.ut.item() > 0
    assert not out0.ut.requires_grad and not out0.mle.requires_grad
    g_tox = torch.autograd.grad(out0.loss, [tox_logits], allow_unused=True)[0]
    assert g_tox is None  # the toxic branch is not part of the ablation's graph


def test_zero_global_counts_contribute_zero_but_stay_in_graph():
    logp = torch.log(torch.full((2, 3), 0.5)).requires_grad_(True)
    none = torch.zeros(2, 3, dtype=torch.bool)
    out = dual_loss(logp, none, logp, none, 1.0, pos_tokens_global=0, tox_tokens_global=0)
    assert out.loss.item() == 0.0 and out.ut.item() == 0.0 and out.toxic_prob_mean.item() == 0.0
    (g,) = torch.autograd.grad(out.loss, [logp])  # backward still runs (every DDP worker must)
    assert torch.count_nonzero(g) == 0


def test_dual_loss_guards():
    logp = torch.log(torch.full((1, 3), 0.5))
    mask = torch.tensor([[True, True, False]])
    with pytest.raises(ValueError, match="all-reduced"):
        dual_loss(logp, mask, logp, mask, 1.0, pos_tokens_global=1, tox_tokens_global=2)
    with pytest.raises(ValueError, match="alpha"):
        dual_loss(logp, mask, logp, mask, -1.0, 2, 2)
    with pytest.raises(ValueError, match="shape"):
        dual_loss(logp, mask[:, :2], logp, mask, 1.0, 2, 2)
    with pytest.raises(ValueError, match=">= 0"):
        dual_loss(logp, mask, logp, mask, 1.0, -3, 2)
    # Counts may arrive as tensors straight from an all-reduce.
    out = dual_loss(logp, mask, logp, mask, 1.0, torch.tensor(4.0), torch.tensor(2))
    assert out.mle.item() == pytest.approx(LN2 / 2, rel=1e-6)
