"""The objective protocol and registry: dual == dual_loss, DPO against TRL's sigmoid formula by hand,
shard invariance, and the config fields that select them."""

from __future__ import annotations

import math

import pytest
import torch

from ptalign_ray.config import ConfigError, TrainingConfig, parse_config
from ptalign_ray.training.loss import dual_loss
from ptalign_ray.training.objectives import OBJECTIVES, Batch, Counts, Dpo, Dual, build_objective, dpo_loss

# Sequence log-probs of three (chosen, rejected) pairs under the policy and the reference.
POLICY_CHOSEN = [-5.0, -3.0, -8.0]
REF_CHOSEN = [-6.0, -2.5, -8.0]
POLICY_REJECTED = [-7.0, -4.0, -9.0]
REF_REJECTED = [-6.5, -4.2, -7.0]
# TRL (loss_type="sigmoid", label_smoothing 0): logits = (pc - rc) - (pr - rr) = [1.5, -0.7, 2.0];
# loss_i = -logsigmoid(beta * logits_i) = log(1 + exp(-beta * logits_i)); rewards = beta * (policy - ref).
EXPECTED = {
    # beta: (per-pair losses, reward accuracy, mean margin, mean chosen reward, mean rejected reward)
    0.1: ([0.6209570478, 0.7287595555, 0.5981388694], 2 / 3, 0.28 / 3, 0.05 / 3, -0.23 / 3),
    0.5: ([0.3868710061, 0.8833821554, 0.3132616875], 2 / 3, 1.4 / 3, 0.25 / 3, -1.15 / 3),
}


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_is_trl_sigmoid_by_hand(beta):
    losses, accuracy, margin, chosen, rejected = EXPECTED[beta]
    assert losses[0] == pytest.approx(math.log1p(math.exp(-beta * 1.5)), rel=1e-9)  # the formula, once spelt out
    loss, m = dpo_loss(_t(POLICY_CHOSEN), _t(POLICY_REJECTED), _t(REF_CHOSEN), _t(REF_REJECTED), beta, 3)
    assert loss.item() == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert m["loss"].item() == pytest.approx(loss.item())
    assert m["reward_accuracy"].item() == pytest.approx(accuracy)
    assert m["reward_margin"].item() == pytest.approx(margin, rel=1e-5)
    assert m["chosen_reward"].item() == pytest.approx(chosen, rel=1e-5)
    assert m["rejected_reward"].item() == pytest.approx(rejected, rel=1e-5)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen = _t(POLICY_CHOSEN).requires_grad_(True)
    rejected = _t(POLICY_REJECTED).requires_grad_(True)
    loss, _ = dpo_loss(chosen, rejected, _t(REF_CHOSEN), _t(REF_REJECTED), 0.1, 3)
    loss.backward()
    # d loss / d chosen_i = -beta * sigmoid(-beta * logits_i) / N; the rejected side gets the opposite sign
    expected = [-0.1 * (1 / (1 + math.exp(0.1 * x))) / 3 for x in (1.5, -0.7, 2.0)]
    assert torch.allclose(chosen.grad, _t(expected), atol=1e-7)
    assert torch.allclose(rejected.grad, -chosen.grad)


def _token_batch():
    """The three pairs as per-token log-probs [3, 5]: the sums over the masks are the sequences above;
    unmasked positions (prompt, padding) hold values that must not count, -inf included."""
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 0, 0, 0]], dtype=torch.bool)

    def spread(totals):
        logp = torch.full((3, 5), -float("inf"))
        for i, total in enumerate(totals):
            on = mask[i].nonzero().flatten()
            logp[i, on] = total / len(on)
        return logp

    return spread(POLICY_CHOSEN), mask, spread(POLICY_REJECTED), mask.clone()


def test_dpo_objective_sums_masked_tokens_and_normalises_by_the_global_pairs():
    chosen, cmask, rejected, rmask = _token_batch()
    batch = Batch(chosen, cmask, rejected, rmask, _t(REF_CHOSEN), _t(REF_REJECTED))
    loss, m = Dpo(0.1)(batch, Counts(chosen_tokens=float(cmask.sum()), rejected_tokens=float(rmask.sum()), pairs=3))
    assert loss.item() == pytest.approx(sum(EXPECTED[0.1][0]) / 3, rel=1e-6)
    assert set(m) == set(Dpo.metrics)
    assert m["mle"].item() == pytest.approx(-sum(POLICY_CHOSEN) / 6, rel=1e-6)  # per chosen token, not trained
    # Two shards of the same step: each normalised by the step's 3 pairs, their sum is the whole.
    counts = Counts(6, 6, pairs=3)
    parts = [Dpo(0.1)(Batch(chosen[s], cmask[s], rejected[s], rmask[s], _t(REF_CHOSEN)[s], _t(REF_REJECTED)[s]), counts)
             for s in (slice(0, 1), slice(1, 3))]  # fmt: skip
    assert sum(p[0].item() for p in parts) == pytest.approx(loss.item(), rel=1e-6)
    for k in Dpo.metrics:
        assert sum(p[1][k].item() for p in parts) == pytest.approx(m[k].item(), rel=1e-5, abs=1e-7), k
    # A row with an empty side (a dummy row) is not a pair: it adds nothing.
    empty = torch.zeros_like(cmask)
    loss0, m0 = Dpo(0.1)(Batch(chosen, empty, rejected, empty, _t(REF_CHOSEN), _t(REF_REJECTED)), Counts(0, 0, 0))
    assert loss0.item() == 0.0 and m0["reward_accuracy"].item() == 0.0
    with pytest.raises(ValueError, match="all-reduced"):
        Dpo(0.1)(batch, Counts(6, 6, pairs=2))  # the shard has 3 pairs: the count was not all-reduced
    with pytest.raises(ValueError, match="reference"):
        Dpo(0.1)(Batch(chosen, cmask, rejected, rmask), counts)


def test_dual_objective_is_dual_loss():
    torch.manual_seed(0)
    pos, tox = torch.log(torch.rand(2, 6)), torch.log(torch.rand(2, 6))
    pmask, tmask = torch.rand(2, 6) > 0.3, torch.rand(2, 6) > 0.5
    counts = Counts(float(pmask.sum()), float(tmask.sum()), 2)
    loss, m = Dual(2.0)(Batch(pos, pmask, tox, tmask), counts)
    ref = dual_loss(pos, pmask, tox, tmask, 2.0, counts.chosen_tokens, counts.rejected_tokens)
    assert loss.item() == ref.loss.item() and set(m) == set(Dual.metrics)
    assert (m["mle"], m["ut"], m["toxic_prob"]) == (ref.mle, ref.ut, ref.toxic_prob_mean)
    assert Dual(2.0).trains_rejected and not Dual(0.0).trains_rejected


def test_registry_and_config():
    assert set(OBJECTIVES) >= {"dual", "dpo"}
    for cls in OBJECTIVES.values():  # what the trainer, data and reports rely on
        assert next(iter(cls.metrics)) == "loss" and set(cls.weights) <= set(cls.metrics)
        assert set(cls.weights.values()) <= {"chosen_tokens", "rejected_tokens", "pairs"}
        assert cls.rejected_mask in ("ut", "response")
        assert set(cls.config_fields) <= set(TrainingConfig.model_fields)
    assert TrainingConfig().objective == "dual" and isinstance(build_objective(TrainingConfig()), Dual)
    dpo = build_objective(TrainingConfig(objective="dpo", dpo_beta=0.3))
    assert isinstance(dpo, Dpo) and dpo.params == {"beta": 0.3}
    assert TrainingConfig().dpo_beta == 0.1 and TrainingConfig().ablation_dpo is False


@pytest.mark.parametrize(
    "training, message",
    [
        (
            {"objective": "ppo"},
            r"training\.objective: .*unknown training objective 'ppo'; registered: \['dpo', 'dual'\]",
        ),
        ({"dpo_beta": 0}, r"training\.dpo_beta: .*greater than 0"),
        ({"objective": "dpo", "lora": {"enabled": False}}, r"training\.objective .*'dpo'.*training\.lora\.enabled"),
        ({"ablation_dpo": True, "lora": {"enabled": False}}, r"training\.ablation_dpo .*training\.lora\.enabled"),
    ],
)
def test_bad_objective_config_names_the_field(training, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"training": training})


def test_dpo_beta_must_be_positive():
    with pytest.raises(ValueError, match="beta"):
        Dpo(0.0)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(_t([0.0]), _t([0.0]), _t([0.0]), _t([0.0]), -1.0, 1)
