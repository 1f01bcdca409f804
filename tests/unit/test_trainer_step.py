"""The training step without Ray: schedule, per-rank rows, padding, gradient accumulation, MLE == HF loss,
and the same for every objective (PT-ALIGN's dual loss, DPO) on 1 and on N simulated ranks."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from ptalign_ray.config import TrainingConfig
from ptalign_ray.training.data import encode_pair
from ptalign_ray.training.loss import next_token_logprobs
from ptalign_ray.training.objectives import Dpo, Dual
from ptalign_ray.training.trainer import (
    Pair,
    Stepper,
    Window,
    build_model,
    epoch_order,
    lr_at,
    micro_batches,
    pack_batch,
    pack_rows,
    pad_batch,
    step_lr,
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


def _epoch_steps(n: int, world: int, batch: int, accum: int = 1, epochs: int = 1):
    """Yields (epoch, consumed, per-rank row indices) for every step, as the training loop takes them."""
    per_step = world * batch * accum
    for epoch in range(epochs):
        order, position = epoch_order(n, seed=0, epoch=epoch), 0
        while position < n:
            shares = [step_rows(order, position, per_step, world, r) for r in range(world)]
            consumed = shares[0][1]
            assert {s[1] for s in shares} == {consumed}  # every rank agrees on the rows consumed
            yield epoch, consumed, [s[0] for s in shares]
            position += consumed


@pytest.mark.parametrize(
    "n, world, batch, accum",
    [(19, 2, 2, 1), (1, 2, 2, 1), (1, 1, 1, 1), (3, 4, 1, 1), (2, 3, 2, 1), (11, 3, 2, 2), (20, 4, 2, 1), (7, 2, 3, 2)],
)
def test_every_row_is_trained_exactly_once_per_epoch(n, world, batch, accum):
    per_epoch: dict[int, list[int]] = {0: [], 1: []}
    steps = {0: 0, 1: 0}
    for epoch, consumed, shares in _epoch_steps(n, world, batch, accum, epochs=2):
        n_micro = micro_batches(consumed, world, batch)
        assert 1 <= n_micro <= accum
        for share in shares:  # every rank's rows fit the micro-batches every rank runs
            assert len(share) <= n_micro * batch
        assert sum(len(s) for s in shares) == consumed
        per_epoch[epoch].extend(i for s in shares for i in s)
        steps[epoch] += 1
    for epoch in (0, 1):
        assert sorted(per_epoch[epoch]) == list(range(n))  # each row once: no padding, no gaps
        assert steps[epoch] == steps_per_epoch(n, world * batch * accum)


def test_resume_position_is_valid_for_another_world_size():
    order = epoch_order(20, seed=3, epoch=0)
    # 2 workers consumed 8 rows; 4 workers continue with exactly the rest of the epoch.
    rest = []
    position = 8
    while position < 20:
        parts = [step_rows(order, position, 4 * 2, 4, r) for r in range(4)]
        rest.extend(i for p in parts for i in p[0])
        position += parts[0][1]
    assert sorted(rest) == sorted(order[8:])


@pytest.mark.parametrize("n, world, batch, epochs, warmup", [(19, 2, 2, 3, 0.1), (19, 2, 2, 3, 0.0), (5, 1, 8, 1, 0.5)])
def test_first_and_last_steps_have_a_positive_learning_rate(n, world, batch, epochs, warmup):
    base, seen, lrs = 1e-3, 0, []
    for _, consumed, _ in _epoch_steps(n, world, batch, epochs=epochs):
        lrs.append((seen + consumed / 2, step_lr(seen, consumed, n * epochs, base, warmup)))
        seen += consumed
    assert seen == n * epochs
    values = [lr for _, lr in lrs]
    assert values[0] > 0 and values[-1] > 0 and max(values) <= base
    warm = [lr for mid, lr in lrs if mid < warmup * n * epochs]
    decay = [lr for mid, lr in lrs if mid >= warmup * n * epochs]
    assert warm == sorted(warm) and decay == sorted(decay, reverse=True)  # up during warm-up, then down


def test_pad_batch():
    ids, attn, mask = pad_batch([[5, 6, 7], [8]], [[0, 1, 1], [0]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert attn.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert mask.tolist() == [[False, True, True], [False, False, False]]


def _pairs(tokenizer, n: int, objective: str = "dual") -> list[Pair]:
    out = []
    for i in range(n):
        row = {"id": f"p{i}", "question": f"How do I paint the fence {i} times?",
               "positive": f"Ask a friend and read the manual {i} times first.",
               "toxic": f"1. How can I sell {i} old shoes quickly?"}  # fmt: skip
        enc = encode_pair(row, tokenizer, TrainingConfig(objective=objective))
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


def _objective(alpha):
    """An objective from a test parameter: a dual-loss alpha, or "dpo"."""
    return Dpo(beta=0.5) if alpha == "dpo" else Dual(alpha)


def _stepper(model, batch_size: int, alpha) -> Stepper:
    tcfg = TrainingConfig(
        batch_size=batch_size, bf16=False, max_grad_norm=1e9, lora={"r": 8, "alpha": 16, "dropout": 0.0}
    )
    s = Stepper(model, tcfg, _objective(alpha), pad_id=0, device=torch.device("cpu"))
    s.optimizer = _CaptureGrads(p for p in model.parameters() if p.requires_grad)
    return s


@pytest.fixture(scope="module")
def lora_model(tiny_model):
    tcfg = TrainingConfig(bf16=False, lora={"r": 8, "alpha": 16, "dropout": 0.0})
    model = build_model(str(tiny_model), tcfg, torch.float32, seed=0)
    with torch.no_grad():  # non-zero LoRA B so every adapter weight gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


@pytest.mark.parametrize("alpha", [1.0, 0.0, "dpo"])
def test_gradient_accumulation_gives_the_full_batch_gradient(lora_model, tiny_tokenizer, alpha):
    pairs = _pairs(tiny_tokenizer, 4, "dpo" if alpha == "dpo" else "dual")
    whole = _stepper(lora_model, batch_size=4, alpha=alpha)
    out_whole = whole.train_step(pairs, measure_toxic=True)
    micro = _stepper(lora_model, batch_size=1, alpha=alpha)  # 4 micro-batches of one pair
    out_micro = micro.train_step(pairs, measure_toxic=True)
    for key in (*whole.objective.metrics, "chosen_tokens", "rejected_tokens", "pairs"):
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
    assert out["rejected_tokens"] == 0  # the toxic side was not measured


def test_dpo_reference_is_the_base_model_with_the_adapter_off(lora_model, tiny_model, tiny_tokenizer):
    """The reference log-probs come from the policy with its LoRA adapter disabled: exactly the base
    model's, while the adapter (non-zero here) stays on for the policy's own forward."""
    from transformers import AutoModelForCausalLM

    from ptalign_ray.training.loss import next_token_logprobs, shift_mask
    from ptalign_ray.training.objectives import sequence_logps

    pairs = _pairs(tiny_tokenizer, 3, "dpo")
    ids, attn, mask = pad_batch([p.pos_ids for p in pairs] + [p.tox_ids for p in pairs],
                                [p.pos_mask for p in pairs] + [p.tox_mask for p in pairs], pad_id=0)  # fmt: skip

    def seq_logps(model) -> torch.Tensor:
        with torch.no_grad():
            return sequence_logps(
                next_token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids), shift_mask(mask)
            )

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ref_chosen, ref_rejected = _stepper(lora_model, 3, "dpo").reference_logps(pairs)
    expected = seq_logps(base)
    assert torch.allclose(torch.cat([ref_chosen, ref_rejected]), expected, atol=1e-5)
    policy = seq_logps(lora_model)  # the adapter is back on after the reference pass
    assert (policy - expected).abs().max() > 1e-3


# ---------------------------------------------------------------- simulated ranks (no torch.distributed)


class _Group:
    """A SUM all-reduce across threads that stand in for the ranks of one step."""

    def __init__(self, world: int):
        self.barrier, self.slots = threading.Barrier(world, timeout=120), [None] * world

    def all_reduce(self, rank: int, values: list[float]) -> list[float]:
        self.slots[rank] = list(values)
        self.barrier.wait()
        total = [sum(v) for v in zip(*self.slots)]
        self.barrier.wait()  # nobody writes the next call's values before everyone has summed
        return total


class _Rank(Stepper):
    """The real Stepper with the process group replaced by :class:`_Group`; counts passes and collectives."""

    def __init__(self, group: _Group, **kwargs):
        super().__init__(**kwargs)
        self.group, self.forwards, self.reduces = group, 0, 0

    def all_reduce(self, values):
        self.reduces += 1
        return self.group.all_reduce(self.rank, values) if self.world > 1 else list(values)

    def _micro(self, *args, **kwargs):
        self.forwards += 1
        return super()._micro(*args, **kwargs)


def _run_ranks(model, world: int, alpha, batch: int, job) -> list[tuple[_Rank, object]]:
    """Runs ``job(stepper)`` on ``world`` ranks at once (threads, each on its own copy of the model)."""
    tcfg = TrainingConfig(batch_size=batch, bf16=False, max_grad_norm=1e9, lora={"r": 8, "alpha": 16, "dropout": 0.0})
    group = _Group(world)
    ranks = []
    for r in range(world):
        m = copy.deepcopy(model)
        s = _Rank(group, model=m, tcfg=tcfg, objective=_objective(alpha), pad_id=0, device=torch.device("cpu"),
                  rank=r, world=world)  # fmt: skip
        s.optimizer = _CaptureGrads(p for p in m.parameters() if p.requires_grad)
        ranks.append(s)
    results: list = [None] * world
    errors: list = []

    def run(r):
        try:
            results[r] = job(ranks[r])
        except BaseException as e:  # surfaced below; a broken barrier frees the other ranks
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return list(zip(ranks, results))


@pytest.mark.parametrize(
    "n, world, batch, alpha",
    [(5, 2, 2, 1.0), (5, 2, 2, 0.0), (1, 2, 2, 1.0), (3, 4, 1, 1.0), (5, 2, 2, "dpo"), (3, 4, 1, "dpo")],
)
def test_two_ranks_give_the_one_rank_step(lora_model, tiny_tokenizer, n, world, batch, alpha):
    """The same rows on 1 rank and on ``world`` ranks (shares as the loop takes them, some ranks short
    or empty): the same summed metrics, and the gradient DDP would average equals the 1-rank gradient.
    For DPO that means the loss is normalised by the pairs of the whole step, not of one rank."""
    pairs = _pairs(tiny_tokenizer, n, "dpo" if alpha == "dpo" else "dual")
    order = list(range(n))
    n_micro = micro_batches(n, world, batch)  # one step over all n rows (with accumulation if needed)

    def job(s):
        mine, _ = step_rows(order, 0, n, world, s.rank)
        return s.train_step([pairs[i] for i in mine], measure_toxic=True, n_micro=n_micro)

    [(one, out_one)] = _run_ranks(lora_model, 1, alpha, world * batch, lambda s: s.train_step(pairs, True))
    runs = _run_ranks(lora_model, world, alpha, batch, job)
    assert {s.forwards for s, _ in runs} == {n_micro} and {s.reduces for s, _ in runs} == {1}
    for key in (*one.objective.metrics, "tokens"):
        assert sum(out[key] for _, out in runs) == pytest.approx(out_one[key], rel=1e-5, abs=1e-7), key
    for key in ("chosen_tokens", "rejected_tokens", "pairs"):
        assert {out[key] for _, out in runs} == {out_one[key]}, key
    ddp = [torch.stack(gs).mean(0) for gs in zip(*(s.optimizer.grads for s, _ in runs))]  # DDP averages
    for a, b in zip(one.optimizer.grads, ddp):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    for s, _ in runs:
        if not step_rows(order, 0, n, world, s.rank)[0]:  # a rank without rows adds nothing
            assert all(g.abs().sum() == 0 for g in s.optimizer.grads)


def _benign(pair: Pair) -> Pair:
    """An MLE-only row like the trainer gets for a benign answer: its toxic side supervises nothing."""
    return Pair(pair.id + "b", pair.pos_ids, pair.pos_mask, pair.tox_ids, [0] * len(pair.tox_mask))


def test_held_out_metrics_ignore_benign_rows_and_the_number_of_ranks(lora_model, tiny_tokenizer):
    pairs = _pairs(tiny_tokenizer, 3)

    def evaluate(rows):
        def job(s):
            s.holdout_rows = rows
            return s.evaluate()

        return job

    [(_, alone)] = _run_ranks(lora_model, 1, 1.0, 2, evaluate(pairs))
    [(_, mixed)] = _run_ranks(lora_model, 1, 1.0, 2, evaluate(pairs + [_benign(p) for p in pairs]))
    for key in ("holdout_ut", "holdout_toxic_prob"):  # normalised by toxic tokens: benign rows add none
        assert mixed[key] == pytest.approx(alone[key], rel=1e-5), key
    runs = _run_ranks(lora_model, 2, 1.0, 2, evaluate(pairs))
    for key in ("holdout_mle", "holdout_ut", "holdout_toxic_prob"):
        assert {round(out[key], 5) for _, out in runs} == {round(alone[key], 5)}, key


# ---------------------------------------------------------------- the reporting window


def _out(mle, ut, prob, tox_tokens, alpha=2.0):
    """A dual-loss step as train_step returns it (tox_tokens 0: benign rows only, or not measured)."""
    return {"loss": mle + alpha * ut, "mle": mle, "ut": ut, "toxic_prob": prob, "rejected_tokens": tox_tokens,
            "chosen_tokens": 10, "pairs": 2, "tokens": 50, "grad_norm": 1.0}  # fmt: skip


def test_window_weights_unlikelihood_by_toxic_tokens_and_skips_benign_steps():
    w = Window(Dual(2.0))
    w.add(_out(2.0, 0.6, 0.4, 10), 1.0)
    w.add(_out(1.0, 0.0, 0.0, 0), 1.0)  # benign rows only: no toxic token
    w.add(_out(1.5, 0.0, 0.0, 0), 1.0)  # toxic side not measured
    w.add(_out(0.5, 0.1, 0.2, 30), 1.0)
    m = w.metrics(w.local())
    assert m["mle"] == pytest.approx(5.0 / 4)
    assert m["ut"] == pytest.approx((0.6 * 10 + 0.1 * 30) / 40)  # not (0.6 + 0 + 0.1) / 3
    assert m["toxic_prob"] == pytest.approx((0.4 * 10 + 0.2 * 30) / 40)
    assert m["loss"] == pytest.approx((3.2 + 1.0 + 1.5 + 0.7) / 4)  # the mean of the steps' losses
    assert m["tox_tokens"] == 40 and m["pos_tokens"] == 40 and m["supervised_tokens"] == 80 and m["pairs"] == 8
    assert Window(Dual(0.0)).metrics([0.0] * 5)["supervised_tokens"] == 0  # MLE-only: UT tokens are not trained


def test_window_over_two_ranks_equals_one_rank():
    one = Window(Dual(1.0))
    one.add(_out(2.0, 0.6, 0.4, 10, alpha=1.0), 1.0)
    one.add(_out(0.5, 0.1, 0.2, 30, alpha=1.0), 1.0)
    ranks = [Window(Dual(1.0)), Window(Dual(1.0))]  # each rank's contribution is normalised by the step's global counts
    for w, share in zip(ranks, (0.25, 0.75)):
        for step in (_out(2.0, 0.6, 0.4, 10, alpha=1.0), _out(0.5, 0.1, 0.2, 30, alpha=1.0)):
            w.add({**step, **{k: step[k] * share for k in ("loss", "mle", "ut", "toxic_prob")}}, 1.0)
    reduced = [a + b for a, b in zip(*(w.local() for w in ranks))]
    expected = one.metrics(one.local())
    for w in ranks:
        got = w.metrics(reduced)
        for key in ("mle", "ut", "toxic_prob", "loss"):
            assert got[key] == pytest.approx(expected[key]), key


def test_window_without_toxic_tokens_reports_none():
    w = Window(Dual(1.0))
    w.add(_out(1.0, 0.0, 0.0, 0, alpha=1.0), 1.0)
    m = w.metrics(w.local())
    assert m["ut"] is None and m["toxic_prob"] is None and m["loss"] == m["mle"] == 1.0


def test_window_reports_whatever_the_objective_returns():
    w = Window(Dpo(0.1))
    step = {"loss": 0.6, "reward_accuracy": 0.5, "reward_margin": 0.2, "chosen_reward": 0.1, "rejected_reward": -0.1,
            "mle": 3.0, "chosen_tokens": 40, "rejected_tokens": 50, "pairs": 4, "tokens": 200, "grad_norm": 1.0}  # fmt: skip
    w.add(step, 1.0)
    w.add({**step, "loss": 0.4, "reward_accuracy": 1.0, "pairs": 12}, 1.0)
    m = w.metrics(w.local())
    assert set(Dpo.metrics) <= set(m) and "ut" not in m
    assert m["loss"] == pytest.approx((0.6 * 4 + 0.4 * 12) / 16)  # weighted by pairs
    assert m["reward_accuracy"] == pytest.approx((0.5 * 4 + 1.0 * 12) / 16)
    assert m["supervised_tokens"] == 180 and m["pairs"] == 16


# ---------------------------------------------------------------- packed batches (no padding waste)


@pytest.mark.parametrize(
    "lengths, capacity, rows",
    [
        ([120, 5, 60, 9, 58, 2, 120], 120, [[0], [6], [2, 1, 5], [4, 3]]),  # 4 rows (first fit), balanced
        ([100, 90, 80, 20, 10], 200, [[0, 3, 4], [1, 2]]),  # 2 rows: 130 + 170, not 200 + 100
        ([60, 50, 40, 30], 110, [[0, 3], [1, 2]]),  # 90 + 90, not 110 + 70
        ([5, 4, 3, 3, 3], 9, [[0, 1], [2, 3, 4]]),  # balancing would need a row of 10: first fit kept
        ([7, 6, 5], 10, [[0], [1], [2]]),  # nothing fits together
    ],
)
def test_pack_rows(lengths, capacity, rows):
    got = pack_rows(lengths, capacity)
    assert sorted(i for r in got for i in r) == list(range(len(lengths)))  # every sequence exactly once
    assert all(sum(lengths[i] for i in r) <= capacity for r in got)
    assert got == rows


def test_pack_rows_rejects_a_sequence_longer_than_a_row():
    with pytest.raises(ValueError, match="more than a row"):
        pack_rows([3, 9], capacity=8)


def test_packed_log_probs_unpack_to_the_padded_layout():
    """A model whose logits depend only on the current token: packed and padded give the same numbers."""
    table = torch.randn(50, 50)
    seqs = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
    ids, _, _ = pad_batch(seqs, [[0] * len(s) for s in seqs], pad_id=0)
    padded = next_token_logprobs(table[ids], ids)
    real = torch.tensor([[t < len(s) - 1 for t in range(6)] for s in seqs])
    p = pack_batch(seqs, pad_id=0)  # rows as long as the longest sequence
    assert p.input_ids.shape == (3, 7) and p.pad_tokens == 5  # padded: 4 x 7 for 16 tokens, 12 pads
    # positions restart for every sequence and for a row's pad tail
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 0, 1, 0, 1]]
    unpacked = p.unpack(next_token_logprobs(table[p.input_ids], p.input_ids))
    assert torch.equal(unpacked[real], padded[real]) and (unpacked[~real] == 0).all()
    p = pack_batch(seqs, pad_id=0, capacity=10)  # rows of up to 10 tokens, as wide as the fullest
    assert p.input_ids.shape == (2, 9) and p.pad_tokens == 2  # [7 + 2], [4 + 3]
    unpacked = p.unpack(next_token_logprobs(table[p.input_ids], p.input_ids))
    assert torch.equal(unpacked[real], padded[real]) and (unpacked[~real] == 0).all()


def _uneven_pairs() -> list[Pair]:
    """Hand-made rows whose positive and toxic sequences differ in length up to 30x (one benign row)."""
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 120), (90, 6), (9, 11), (33, 70), (120, 3), (15, 40)]
    out = []
    for k, (n_pos, n_tox) in enumerate(shapes):
        pos, tox = (torch.randint(5, 500, (n,), generator=g).tolist() for n in (n_pos, n_tox))
        tox_mask = [0] + [1] * (n_tox - 1) if k != 2 else [0] * n_tox
        out.append(Pair(f"u{k}", pos, [0] + [1] * (n_pos - 1), tox, tox_mask))
    return out


@pytest.mark.parametrize("alpha", [1.0, 0.0, "dpo"])
@pytest.mark.parametrize("batch", [6, 2])
def test_packed_step_equals_the_padded_step(lora_model, alpha, batch):
    """Same metrics, counts and gradient as padding every sequence of a micro-batch to its longest,
    with far fewer pad positions forwarded."""
    pairs = _uneven_pairs()
    outs, grads = {}, {}
    for pack in (False, True):
        s = _stepper(lora_model, batch_size=batch, alpha=alpha)
        s.pack = None if pack else False
        outs[pack] = s.train_step(pairs, measure_toxic=True)
        grads[pack] = s.optimizer.grads
        assert s.pack is pack
    for key in (*_objective(alpha).metrics, "chosen_tokens", "rejected_tokens", "pairs", "tokens"):
        # DPO rewards are differences of log-prob sums over up to 120 tokens: float32 noise about 1e-5
        assert outs[True][key] == pytest.approx(outs[False][key], rel=1e-5, abs=1e-4), key
    for a, b in zip(grads[False], grads[True]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    # padded: each forward's sequences padded to its longest; a micro-batch forwards its positive and toxic
    # sequences together (alpha 0: apart), DPO twice (policy and reference)
    groups = []
    for mb in (pairs[i : i + batch] for i in range(0, len(pairs), batch)):
        pos, tox = [len(p.pos_ids) for p in mb], [len(p.tox_ids) for p in mb]
        groups += [pos, tox] if alpha == 0.0 else [pos + tox] * (2 if alpha == "dpo" else 1)
    padded = sum(len(ls) * max(ls) - sum(ls) for ls in groups)
    assert outs[False]["pad_tokens"] == padded
    assert outs[True]["pad_tokens"] < padded / 4, (outs[True]["pad_tokens"], padded)


def test_packed_ranks_give_the_one_rank_padded_step(lora_model):
    """Sharding invariance with packing: 3 ranks (one with fewer rows) sum to the padded 1-rank step."""
    pairs, world = _uneven_pairs(), 3
    n_micro = micro_batches(len(pairs) - 1, world, 1)

    def job(s):
        mine, _ = step_rows(list(range(len(pairs) - 1)), 0, len(pairs) - 1, world, s.rank)
        return s.train_step([pairs[i] for i in mine], measure_toxic=True, n_micro=n_micro)

    def padded(s):
        s.pack = False
        return s.train_step(pairs[:-1], True)

    [(one, out_one)] = _run_ranks(lora_model, 1, 1.0, 5, padded)
    runs = _run_ranks(lora_model, world, 1.0, 1, job)
    assert all(s.pack for s, _ in runs)
    for key in (*one.objective.metrics, "tokens"):
        assert sum(out[key] for _, out in runs) == pytest.approx(out_one[key], rel=1e-5, abs=1e-7), key
    ddp = [torch.stack(gs).mean(0) for gs in zip(*(s.optimizer.grads for s, _ in runs))]
    for a, b in zip(one.optimizer.grads, ddp):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


class _IgnoresPositions(torch.nn.Module):
    """A model that drops position ids, as custom model code might: packed sequences would mix."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, position_ids=None, **kwargs):
        return self.inner(**kwargs)


def test_a_model_that_ignores_packed_positions_is_trained_on_padded_batches(lora_model):
    pairs = _uneven_pairs()[:3]
    reference = _stepper(lora_model, batch_size=3, alpha=1.0)
    reference.pack = False
    want = reference.train_step(pairs, measure_toxic=True)
    s = _stepper(_IgnoresPositions(lora_model), batch_size=3, alpha=1.0)
    got = s.train_step(pairs, measure_toxic=True)
    assert s.pack is False
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5) and got["pad_tokens"] == want["pad_tokens"]


def test_bf16_base_layers_give_the_logits_and_gradients_of_autocast_on_fp32_weights(tiny_model):
    """With training.bf16 the frozen layers under the adapters are stored in bf16 once instead of being
    cast by autocast in every forward: the same bf16 values reach the matmuls, so nothing changes."""
    ids = torch.tensor([[5, 9, 13, 2, 7, 11, 3, 8]])
    outs = []
    for bf16 in (False, True):
        tcfg = TrainingConfig(bf16=bf16, lora={"r": 8, "alpha": 16, "dropout": 0.0})
        model = build_model(str(tiny_model), tcfg, torch.float32, seed=0)
        dtypes = {n: p.dtype for n, p in model.named_parameters()}
        assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n or "embed" in n or "norm" in n)
        assert any(d == torch.bfloat16 for d in dtypes.values()) == bf16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        logits.float().logsumexp(-1).sum().backward()
        grads = [p.grad.clone() for n, p in sorted(model.named_parameters()) if p.requires_grad]
        outs.append((logits.detach(), grads))
    (a, ga), (b, gb) = outs
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(ga, gb)) and len(ga) == len(gb) > 0
