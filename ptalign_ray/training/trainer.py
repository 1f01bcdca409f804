"""The per-worker training loop run by Ray Train (TorchTrainer, Train V2).

Data. Every worker receives the whole pre-tokenised dataset (it is small: one row per question) and
takes its own rows by index: each epoch has a seeded permutation of the rows, a step consumes the next
``world_size * batch_size * grad_accum_steps`` of them, and rank r takes every world_size-th row of
that slice. Every row is trained exactly once per epoch: the last step of an epoch may be short, and
then a rank with fewer rows (or none) makes up the missing micro-batches with an empty dummy row
(zero loss, zero gradient), so every rank runs the same forward / backward passes and collectives.
Ray Data's streaming split hands blocks to whichever worker asks first, so a data position
could not be replayed exactly; index sharding makes the position a single number (rows consumed in the
epoch) that stays valid when the number of workers changes (elastic training, a restart on another
layout).

Padding. A micro-batch's sequences (chosen and rejected of its rows) are packed into rows of at most
``max_seq_len`` tokens (first-fit decreasing), with position ids restarting at every sequence, so
transformers' attention keeps them apart and the forward pass spends almost nothing on pad tokens.
The log-probs are unpacked to the per-sequence layout the objectives read, so rows, micro-batches,
counts and loss are exactly those of a padded batch. Whether the model honours packed position ids is
checked once (two sequences packed must score as they do alone); if not, batches are padded.

Loss. The objective (``training.objective``, :mod:`.objectives`) is called per micro-batch with the
step's global counts (mask sums and pairs, all-reduced once per optimizer step), so each worker
computes its contribution, and the loss is multiplied by the world size before ``backward()`` because
DDP / FSDP average gradients: the gradient is that of the full-batch loss for any split of the batch.
Metrics are whatever the objective returns; nothing here knows their names.

Checkpoints (every ``checkpoint_every_steps`` and at the end) hold the trainable weights and the
optimizer gathered to rank 0 through ``torch.distributed.checkpoint.state_dict`` (complete under DDP,
FSDP or a single worker), the step, epoch, data position, samples seen (which drives the learning-rate
schedule), the metrics history, and one RNG file per rank (tensors and lists: everything is loaded
with ``weights_only=True``). On restart ``ray.train.get_checkpoint()`` returns the latest one and
training continues at the next step. A checkpoint folder that a worker wrote into the run's storage
but Ray Train never registered (its node was lost before the controller collected the report: seen
on a multi-node cluster, bench/node_loss.py) is newer than that one, or the only one: the newest
folder wins, else the restarted group would train again from step 0. Every trainable tensor must be in it (no silent fresh adapter);
if any rank cannot read it, all ranks fall back to the next older folder and the older checkpoints Ray Train kept
(``ray.train.get_all_reported_checkpoints()``), and if none loads the error names the folders.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ptalign_ray.config import TrainingConfig
from ptalign_ray.training.loss import next_token_logprobs, shift_mask
from ptalign_ray.training.objectives import Batch, Counts, Objective, build_objective, sequence_logps

STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.pt"
OPTIMIZER_FILE = "optimizer.pt"
ADAPTER_DIR = "adapter"
FULL_MODEL_DIR = "model"


@dataclass
class Pair:
    """One question's positive and toxic sequence with their token masks (0/1 over the ids)."""

    id: str
    pos_ids: list[int]
    pos_mask: list[int]
    tox_ids: list[int]
    tox_mask: list[int]


@dataclass
class Progress:
    """Where training is; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # rows of the current epoch's order already consumed
    samples_seen: int = 0
    resumed_from_step: int = 0
    history: list[dict] = field(default_factory=list)
    # rank 0's seconds per phase outside the optimizer steps, summed over attempts (the stage's time budget)
    seconds: dict[str, float] = field(default_factory=dict)

    def spent(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + seconds, 3)


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested without Ray)


def lr_at(progress: float, base_lr: float, warmup_ratio: float) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup_ratio`` of training, then cosine decay to 0.

    A function of the fraction of samples seen, not of a step counter, so it stays right when the
    number of workers (and with it the steps per epoch) changes on a restart.
    """
    progress = min(max(progress, 0.0), 1.0)
    if warmup_ratio > 0 and progress < warmup_ratio:
        return base_lr * progress / warmup_ratio
    rest = (progress - warmup_ratio) / max(1.0 - warmup_ratio, 1e-12)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * rest))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The seeded row order of one epoch (the same on every worker)."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def step_rows(order: list[int], position: int, rows_per_step: int, world: int, rank: int) -> tuple[list[int], int]:
    """This rank's row indices for the step starting at ``position``, and the rows consumed (all ranks).

    No padding: a short last step gives some ranks fewer rows, or none (see :func:`micro_batches`).
    """
    take = order[position : position + rows_per_step]
    if not take:
        raise ValueError(f"no rows left at position {position} of {len(order)}")
    return take[rank::world], len(take)


def micro_batches(consumed: int, world: int, batch_size: int) -> int:
    """Micro-batches every rank runs in a step of ``consumed`` rows: the largest rank share, batched.

    The same number on every rank keeps DDP / FSDP collectives matched when the shares differ.
    """
    return math.ceil(math.ceil(consumed / world) / batch_size)


def step_lr(samples_seen: int, consumed: int, total: int, base_lr: float, warmup_ratio: float) -> float:
    """The learning rate of a step: the schedule at the middle of the samples this step trains on.

    Known before the step (progress so far plus half of its rows), and strictly inside (0, 1): the
    first step is already warming up and the last one still learns (at 0 or 1 the schedule is 0).
    """
    return lr_at((samples_seen + consumed / 2) / max(total, 1), base_lr, warmup_ratio)


def steps_per_epoch(n_rows: int, rows_per_step: int) -> int:
    return math.ceil(n_rows / rows_per_step)


def pad_batch(
    seqs: list[list[int]], masks: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pads sequences: (input_ids [B, T], attention_mask [B, T], target mask [B, T] bool)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
        mask[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return ids, attn, mask


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequence indices per packed row: as few rows as first-fit decreasing finds, of at most ``capacity``
    tokens, then balanced (longest first into the emptiest row) when that makes the fullest row shorter.

    Every row is as wide as the fullest one, so balancing is what removes the pad tail of a last,
    nearly empty row. Capacity ``max_seq_len`` bounds a row like the longest sequence a padded batch
    may hold, so attention (quadratic in the row) costs no more per row than there.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if order and lengths[order[0]] > capacity:
        raise ValueError(f"a sequence has {lengths[order[0]]} tokens, more than a row's {capacity}")
    first_fit: list[list[int]] = []
    room: list[int] = []
    for i in order:
        r = next((r for r, free in enumerate(room) if lengths[i] <= free), len(first_fit))
        if r == len(first_fit):
            first_fit.append([])
            room.append(capacity)
        first_fit[r].append(i)
        room[r] -= lengths[i]
    balanced: list[list[int]] = [[] for _ in first_fit]
    fill = [0] * len(first_fit)
    for i in order:
        r = fill.index(min(fill))
        balanced[r].append(i)
        fill[r] += lengths[i]
    return balanced if max(fill, default=0) <= capacity - min(room, default=0) else first_fit


@dataclass
class Packed:
    """Sequences packed into rows: the model's inputs and where each sequence's log-probs lie."""

    input_ids: torch.Tensor  # [R, C]
    position_ids: torch.Tensor  # [R, C], restarting at 0 for every sequence (and for a row's pad tail)
    src: tuple[torch.Tensor, torch.Tensor]  # (row, column) of every next-token log-prob in the rows
    dst: tuple[torch.Tensor, torch.Tensor]  # (sequence, position) of the same log-prob, padded layout
    shape: tuple[int, int]  # [sequences, longest - 1]: the padded layout's log-probs
    tokens: int  # real (non-pad) tokens

    @property
    def pad_tokens(self) -> int:
        return self.input_ids.numel() - self.tokens

    def unpack(self, logp: torch.Tensor) -> torch.Tensor:
        """The rows' next-token log-probs [R, C-1] in the padded layout [N, T-1] (0 where no token)."""
        src = tuple(t.to(logp.device) for t in self.src)
        dst = tuple(t.to(logp.device) for t in self.dst)
        return logp.new_zeros(self.shape).index_put(dst, logp[src])


def pack_batch(seqs: list[list[int]], pad_id: int, capacity: int = 0) -> Packed:
    """Packs ``seqs`` into rows of at most ``capacity`` tokens (at least the longest sequence).

    The rows are as wide as the fullest one. A row's pad tail gets positions restarting at 0 too: it
    is a sequence of its own, so no real token attends to it; its log-probs are never read.
    """
    longest = max(len(s) for s in seqs)
    layout = pack_rows([len(s) for s in seqs], max(capacity, longest))
    width = max(sum(len(seqs[i]) for i in r) for r in layout)
    ids = torch.full((len(layout), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(layout), width), dtype=torch.long)
    src_r, src_c, dst_s, dst_p = [], [], [], []
    for r, members in enumerate(layout):
        at = 0
        for i in members:
            n = len(seqs[i])
            ids[r, at : at + n] = torch.tensor(seqs[i], dtype=torch.long)
            pos[r, at : at + n] = torch.arange(n)
            src_r += [r] * (n - 1)
            src_c += range(at, at + n - 1)
            dst_s += [i] * (n - 1)
            dst_p += range(n - 1)
            at += n
        pos[r, at:] = torch.arange(width - at)

    def index(a: list[int], b: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(a, dtype=torch.long), torch.tensor(b, dtype=torch.long)

    tokens = sum(len(s) for s in seqs)
    return Packed(ids, pos, index(src_r, src_c), index(dst_s, dst_p), (len(seqs), longest - 1), tokens)


# ---------------------------------------------------------------------------------------------
# Model


def build_model(model_path: str, tcfg: TrainingConfig, dtype: torch.dtype, seed: int, trust_remote_code: bool = False):
    """The causal LM, wrapped with a peft LoRA adapter unless full fine-tuning is configured."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # identical adapter init on every worker (DDP also broadcasts rank 0's)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
    model.config.use_cache = False
    if not tcfg.lora.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    lcfg = tcfg.lora
    peft_cfg = LoraConfig(
        r=lcfg.r,
        lora_alpha=lcfg.alpha,
        lora_dropout=lcfg.dropout,
        target_modules=lcfg.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, peft_cfg)
    if dtype == torch.float32 and tcfg.bf16:
        frozen_linears_to_bf16(model)
    return model


def frozen_linears_to_bf16(model: torch.nn.Module) -> None:
    """Stores the frozen base layers under the LoRA adapters in bf16, for training under bf16 autocast.

    Autocast casts an fp32 weight to bf16 in every forward (about 100M weights per forward here); cast
    once, the matmuls see the same bf16 values: 1.04x tokens/s on the 2-core CPU at the default
    config's shapes, and half the memory for those weights. The adapters, embeddings, norms and a
    head tied to the embeddings stay fp32, so the loss is computed exactly as before.
    """
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer) and isinstance(module.get_base_layer(), torch.nn.Linear):
            module.get_base_layer().to(torch.bfloat16)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user model inside a DDP / FSDP wrapper."""
    return getattr(model, "module", model)


def _fsdp_kwargs(model: torch.nn.Module) -> dict:
    import functools

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    layers = {type(m) for m in model.modules() if type(m).__name__ in names}
    kwargs: dict[str, Any] = {"use_orig_params": True}  # LoRA: frozen and trainable params share flat params
    if layers:
        kwargs["auto_wrap_policy"] = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layers)
    return kwargs


# ---------------------------------------------------------------------------------------------
# The worker


class Stepper:
    """Optimizer steps and held-out evaluation of the training objective on one worker.

    Independent of Ray so the benchmark runs the very same step; :class:`Worker` adds the Ray Train
    context, data and checkpoints. The loss is the ``objective``'s (:mod:`.objectives`).
    """

    def __init__(
        self,
        model,
        tcfg: TrainingConfig,
        objective: Objective,
        pad_id: int,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
        pack: bool = True,
    ):
        self.model, self.tcfg, self.objective, self.pad_id = model, tcfg, objective, int(pad_id)
        self.device, self.rank, self.world = device, rank, world
        self.pack: bool | None = None if pack else False  # None: packing not checked yet
        self.pad_tokens = 0  # pad positions forwarded so far (the waste packing removes)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg.bf16)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=tcfg.learning_rate, weight_decay=0.0)
        self.holdout_rows: list[Pair] = []

    # --- distributed helpers

    def agree(self, value):
        """Rank 0's ``value`` on every rank (e.g. a folder listing every rank must follow alike)."""
        if self.world == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self.world > 1:
            t = t.to(self.device) if self.device.type == "cuda" else t
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return [float(v) for v in t.cpu()]

    def counts(self, rows: list[Pair], with_rejected: bool) -> Counts:
        """The step's global counts: this rank's rows, all-reduced (one collective)."""
        local = [
            sum(sum(r.pos_mask) for r in rows),
            sum(sum(r.tox_mask) for r in rows) if with_rejected else 0,
            sum(1 for r in rows if any(r.pos_mask) and any(r.tox_mask)),
        ]
        return Counts(*self.all_reduce(local))

    # --- forward passes

    def _logprobs(self, seqs: list[list[int]], masks: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-token log-probs [N, T-1] and target masks of ``seqs`` (padded layout), and real tokens."""
        ids, attn, mask = pad_batch(seqs, masks, self.pad_id)
        mask, tokens = shift_mask(mask.to(self.device)), int(attn.sum())
        if self.pack is None:
            self.pack = self.packing_works()
        if not self.pack:
            ids, attn = ids.to(self.device), attn.to(self.device)
            self.pad_tokens += ids.numel() - tokens
            with self.autocast:
                logits = self.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            return next_token_logprobs(logits, ids), mask, tokens
        p = pack_batch(seqs, self.pad_id, self.tcfg.max_seq_len)
        ids = p.input_ids.to(self.device)
        self.pad_tokens += p.pad_tokens
        with self.autocast:  # no attention mask: transformers separates the sequences by position ids
            logits = self.model(input_ids=ids, position_ids=p.position_ids.to(self.device), use_cache=False).logits
        return p.unpack(next_token_logprobs(logits, ids)), mask, tokens

    @torch.no_grad()
    def packing_works(self) -> bool:
        """Whether two sequences packed in one row get the log-probs they get in a padded batch.

        A model whose attention mask ignores packed position ids (custom code) would let the second
        sequence attend to the first and train on the wrong loss; it is then trained on padded batches.
        Synthetic token ids, no collective: every rank reaches the same answer.
        """
        a, b = list(range(1, 9)), list(range(9, 21))
        ids, attn, _ = pad_batch([a, b], [[0] * len(a), [0] * len(b)], self.pad_id)
        ids, attn = ids.to(self.device), attn.to(self.device)
        row = torch.tensor([a + b], device=self.device)
        pos = torch.tensor([list(range(len(a))) + list(range(len(b)))], device=self.device)
        was_training = self.model.training
        self.model.eval()  # no dropout
        try:
            with self.autocast:  # as the steps compute (bf16 base layers need it)
                padded = self.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
                packed = self.model(input_ids=row, position_ids=pos, use_cache=False).logits
        finally:
            self.model.train(was_training)
        want = next_token_logprobs(padded, ids)[1, : len(b) - 1]
        got = next_token_logprobs(packed, row)[0, len(a) :]
        # Mean |difference| of the log-probs, SmolLM2-135M on CPU: 7e-6 in fp32 and 0.055 under bf16
        # autocast when packing works; 1.9 (fp32) and 2.4 (bf16) when the second sequence sees the first.
        fp32 = not self.tcfg.bf16 and all(p.dtype == torch.float32 for p in self.model.parameters())
        ok = float((want - got).abs().mean()) <= (1e-3 if fp32 else 0.25)
        if not ok and self.rank == 0:
            print("[training] WARNING: the model ignores packed position ids; training on padded batches", flush=True)
        return ok

    @torch.no_grad()
    def reference_logps(self, rows: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs of the chosen and rejected masked tokens under the reference model: the
        policy with its LoRA adapter switched off (peft ``disable_adapter``), so no second copy is held."""
        seqs = [r.pos_ids for r in rows] + [r.tox_ids for r in rows]
        masks = [r.pos_mask for r in rows] + [r.tox_mask for r in rows]
        with unwrap(self.model).disable_adapter():
            logp, mask, _ = self._logprobs(seqs, masks)
        seq = sequence_logps(logp, mask)
        return seq[: len(rows)], seq[len(rows) :]

    def _micro(self, rows: list[Pair], counts: Counts, with_rejected: bool, joint: bool):
        """One micro-batch: (loss, metrics, tokens forwarded through the policy).

        ``joint``: chosen and rejected in one forward (one backward, one gradient sync). Otherwise
        the rejected side is only measured under no_grad (``with_rejected``) or skipped.
        """
        ref = self.reference_logps(rows) if self.objective.uses_reference else (None, None)
        b = len(rows)
        if with_rejected and joint:
            seqs = [r.pos_ids for r in rows] + [r.tox_ids for r in rows]
            masks = [r.pos_mask for r in rows] + [r.tox_mask for r in rows]
            logp, mask, tokens = self._logprobs(seqs, masks)
            loss, metrics = self.objective(Batch(logp[:b], mask[:b], logp[b:], mask[b:], *ref), counts)
            return loss, metrics, tokens
        tokens = 0
        if with_rejected:  # measured before the chosen forward, so DDP sees one graph per backward
            with torch.no_grad():
                tox_logp, tox_mask, tokens = self._logprobs([r.tox_ids for r in rows], [r.tox_mask for r in rows])
        else:
            tox_logp = torch.zeros(b, 1, device=self.device)
            tox_mask = torch.zeros(b, 1, dtype=torch.bool, device=self.device)
        pos_logp, pos_mask, pos_tokens = self._logprobs([r.pos_ids for r in rows], [r.pos_mask for r in rows])
        loss, metrics = self.objective(Batch(pos_logp, pos_mask, tox_logp, tox_mask, *ref), counts)
        return loss, metrics, tokens + pos_tokens

    def dummy(self) -> Pair:
        """An empty row (two pad tokens, nothing supervised): a forward that adds zero loss and gradient."""
        return Pair("", [self.pad_id] * 2, [0, 0], [self.pad_id] * 2, [0, 0])

    def split_micro(self, rows: list[Pair], n_micro: int) -> list[list[Pair]]:
        """``rows`` in batches of ``batch_size``, made up to ``n_micro`` with dummy micro-batches."""
        b = self.tcfg.batch_size
        micro = [rows[i : i + b] for i in range(0, len(rows), b)]
        if len(micro) > n_micro:
            raise ValueError(f"{len(rows)} rows need {len(micro)} micro-batches of {b}, more than {n_micro}")
        return micro + [[self.dummy()]] * (n_micro - len(micro))

    def train_step(self, rows: list[Pair], measure_toxic: bool, n_micro: int | None = None) -> dict:
        """One optimizer step over this rank's rows in ``n_micro`` micro-batches (the same on every rank).

        Returns this rank's contribution to each of the objective's metrics (SUM over ranks = the
        step's value), the step's global counts, real tokens and pad positions forwarded
        (``tokens``, ``pad_tokens``) and the gradient norm. The rejected side is measured when
        ``measure_toxic`` even if the objective does not train it.
        ``n_micro`` defaults to what ``rows`` need (a single worker); a rank with fewer rows than the
        others, or none, runs dummy micro-batches so every rank does the same passes and all-reduces.
        """
        real = math.ceil(len(rows) / self.tcfg.batch_size)  # the micro-batches that hold rows
        micro = self.split_micro(rows, real if n_micro is None else n_micro)
        joint = self.objective.trains_rejected
        counts = self.counts(rows, with_rejected=joint or measure_toxic)
        sums = dict.fromkeys(self.objective.metrics, 0.0)
        tokens, pad_before = 0, self.pad_tokens
        self.model.train()
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            sync = nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                loss, metrics, n = self._micro(mb, counts, joint or measure_toxic, joint)
                (loss * self.world).backward()
            for k in sums:
                sums[k] += float(metrics[k])
            tokens += n if i < real else 0  # a dummy's pad tokens are not throughput
        if hasattr(self.model, "clip_grad_norm_"):  # FSDP
            grad_norm = self.model.clip_grad_norm_(self.tcfg.max_grad_norm)
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.tcfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        pad = self.pad_tokens - pad_before
        return {**sums, **asdict(counts), "tokens": tokens, "pad_tokens": pad, "grad_norm": float(grad_norm)}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """The objective's metrics on the full held-out set as ``holdout_<metric>`` (every rank in step).

        A metric weighted by a count that is 0 on the held-out set is None (nothing to average).
        """
        rows = self.holdout_rows
        if not rows:
            return {}
        mine = rows[self.rank :: self.world]
        micro = self.split_micro(mine, micro_batches(len(rows), self.world, self.tcfg.batch_size))
        counts = self.counts(mine, with_rejected=True)
        names = list(self.objective.metrics)
        sums = [0.0] * len(names)
        self.model.eval()
        for mb in micro:
            _, metrics, _ = self._micro(mb, counts, with_rejected=True, joint=True)
            sums = [s + float(metrics[k]) for s, k in zip(sums, names)]
        self.model.train()
        weights = self.objective.weights
        out = {
            f"holdout_{k}": None if k in weights and getattr(counts, weights[k]) == 0 else v
            for k, v in zip(names, self.all_reduce(sums))
        }
        return {**out, "holdout_pairs": len(rows)}


class Worker(Stepper):
    """One Ray Train worker: the model prepared for DDP / FSDP, its data, progress and checkpoints."""

    def __init__(self, config: dict):
        import ray.train
        import ray.train.torch

        self.config = config
        tcfg = TrainingConfig.model_validate(config["training"])
        ctx = ray.train.get_context()
        device = ray.train.torch.get_device()
        if device.type == "cpu":
            from ptalign_ray.ray_runtime import usable_cores

            torch.set_num_threads(max(1, usable_cores() // max(1, ctx.get_local_world_size())))
        base_dtype = torch.bfloat16 if (device.type == "cuda" and tcfg.bf16 and tcfg.lora.enabled) else torch.float32
        model = build_model(config["model_path"], tcfg, base_dtype, tcfg.seed, config.get("trust_remote_code", False))
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        # Buffers (rotary tables) are constant: no buffer sync in every forward.
        kwargs = {"forward_sync_buffers": False} if tcfg.strategy == "ddp" else _fsdp_kwargs(model)
        model = ray.train.torch.prepare_model(model, parallel_strategy=tcfg.strategy, parallel_strategy_kwargs=kwargs)
        objective = build_objective(tcfg)
        super().__init__(model, tcfg, objective, config["pad_id"], device, ctx.get_world_rank(), ctx.get_world_size())
        self.train_rows = _load_rows("train")
        self.holdout_rows = _load_rows("holdout")
        self.progress = Progress()
        self.rows_per_step = self.world * tcfg.batch_size * tcfg.grad_accum_steps
        self.total_samples = tcfg.epochs * len(self.train_rows)
        self.taken_names: set[str] = set()  # checkpoint folder names in use (after a fallback, see restore)

    # --- checkpoints

    def save(self, directory: Path, final: bool) -> None:
        """Writes a complete checkpoint into ``directory`` (collective: every rank calls it)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(self.model, options=opts)  # gathered on rank 0 under FSDP
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        torch.save(_rng_state(), directory / f"rng_rank{self.rank}.pt")
        if self.rank != 0:
            return
        trainable = {k: v for k, v in full.items() if k in self.trainable}
        missing = self.trainable - set(trainable)
        if missing:
            raise RuntimeError(f"checkpoint would miss {len(missing)} trainable tensors, e.g. {sorted(missing)[:3]}")
        torch.save(trainable, directory / TRAINABLE_FILE)
        torch.save(optim, directory / OPTIMIZER_FILE)
        (directory / STATE_FILE).write_text(json.dumps(asdict(self.progress)))
        if final:
            inner = unwrap(self.model)
            if self.tcfg.lora.enabled:
                inner.save_pretrained(directory / ADAPTER_DIR, state_dict=trainable)
            else:
                inner.save_pretrained(directory / FULL_MODEL_DIR, state_dict=full, safe_serialization=True)

    def restore(self, checkpoint, saved: list[str]) -> None:
        """Continues from the newest of ``checkpoint`` (Ray Train's latest, or None) and the folders in
        ``saved`` (:func:`saved_checkpoints`) that every rank reads, else from the older checkpoints Ray
        Train kept; raises :class:`CheckpointError` if none loads."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        def read(ckpt) -> dict:
            with ckpt.as_directory() as d:
                return read_checkpoint(Path(d), self.rank, self.trainable, _folder(ckpt))

        def all_ok(ok: bool) -> bool:  # every rank must take the same checkpoint
            return self.all_reduce([0.0 if ok else 1.0])[0] == 0

        skipped, ckpt, loaded = load_first_good(_newest_first(checkpoint, saved), read, all_ok)
        folder = _folder(ckpt)
        self.taken_names = {Path(p).name for p in saved}  # see checkpoint_name
        if skipped:
            self.taken_names |= {Path(c.path).name for c in _kept_checkpoints()}
            if self.rank == 0:
                print("[training] WARNING: " + "\n".join(skipped) + f"\n[training] resuming from {folder}", flush=True)
        elif checkpoint is None or _folder(checkpoint) != folder:
            if self.rank == 0:
                print(f"[training] resuming from {folder}, newer than Ray Train's latest checkpoint "
                      f"({_folder(checkpoint) if checkpoint else 'none'}): its report never reached Ray Train", flush=True)  # fmt: skip
        try:
            # Not strict: the frozen base weights are not in the checkpoint (and a missing key would be
            # filled with the model's current value anyway): read_checkpoint checked the trainable keys.
            keys = set_model_state_dict(
                self.model, loaded["trainable"], options=StateDictOptions(full_state_dict=True, strict=False)
            )
            if keys.unexpected_keys:
                raise CheckpointError(f"checkpoint {folder}: the model has no {sorted(keys.unexpected_keys)[:3]}")
            set_optimizer_state_dict(
                self.model, self.optimizer, loaded["optimizer"], options=StateDictOptions(full_state_dict=True)
            )
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"could not load checkpoint {folder} into the model: {err}") from err
        self.progress = loaded["progress"]
        self.progress.resumed_from_step = self.progress.step
        if loaded["rng"] is not None:
            _set_rng_state(loaded["rng"])
        else:  # a rank that did not exist in the saved layout
            torch.manual_seed(self.tcfg.seed + 7919 * self.rank + self.progress.step)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message names its folder."""


def read_checkpoint(d: Path, rank: int, trainable: set[str], folder: str = "") -> dict:
    """Reads and checks everything this rank needs from a checkpoint folder, changing nothing.

    Only tensors and plain containers are unpickled (``weights_only=True``): the folder is on shared
    storage. Every trainable tensor of the model must be there and nothing else, so a checkpoint of
    another model or adapter layout fails here instead of resuming with a fresh adapter.
    """
    folder = folder or str(d)
    try:
        progress = Progress(**json.loads((d / STATE_FILE).read_text()))
        weights = torch.load(d / TRAINABLE_FILE, map_location="cpu", weights_only=True)
        optimizer = torch.load(d / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        rng_file = d / f"rng_rank{rank}.pt"
        rng = torch.load(rng_file, weights_only=True) if rng_file.is_file() else None
    except Exception as err:  # truncated, missing or not ours: the message says which file
        raise CheckpointError(f"checkpoint {folder} is unreadable: {type(err).__name__}: {err}") from err
    missing, unexpected = trainable - set(weights), set(weights) - trainable
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {folder} does not match the model's trainable weights: {len(missing)} missing "
            f"(e.g. {sorted(missing)[:2]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]})"
        )
    return {"progress": progress, "trainable": weights, "optimizer": optimizer, "rng": rng}


def load_first_good(checkpoints, read, all_ok) -> tuple[list[str], Any, dict]:
    """The first of ``checkpoints`` (newest first) that every rank reads: (why newer ones were skipped, it,
    its contents).

    ``read(ckpt)`` raises on a bad checkpoint; ``all_ok(ok)`` is True when every rank read its files
    (a collective). Raises :class:`CheckpointError` naming every folder tried and how to start over.
    """
    errors, runs = [], set()
    for ckpt in checkpoints:
        try:
            loaded, err = read(ckpt), None
        except Exception as e:
            loaded, err = None, e
        if all_ok(err is None):
            return errors, ckpt, loaded
        if err is None:
            err = f"checkpoint {_folder(ckpt)} is unreadable on another worker"
        elif not isinstance(err, CheckpointError):  # e.g. the folder is gone
            err = f"checkpoint {_folder(ckpt)}: {type(err).__name__}: {err}"
        errors.append(str(err))
        runs.add(str(Path(_folder(ckpt)).parent))
    raise CheckpointError(
        "cannot resume training: no checkpoint that Ray Train kept can be read on every worker:\n"
        + "\n".join(f"  {e}" for e in errors)
        + "\nTo train this stage again from the start, delete the Ray Train run folder "
        + " ".join(sorted(runs))
        + " (or run the stage with --force)."
    )


def _folder(ckpt) -> str:
    return str(getattr(ckpt, "path", ckpt))


def _kept_checkpoints() -> list:
    """The checkpoints Ray Train keeps (``CheckpointConfig.num_to_keep``), oldest first."""
    import ray.train

    return [r.checkpoint for r in ray.train.get_all_reported_checkpoints(timeout_s=60)]


def step_of(name: str) -> int:
    """The step of a checkpoint folder named by :func:`checkpoint_name`; -1 for another name."""
    m = re.match(r"(?:final_)?step_(\d+)", name)
    return int(m.group(1)) if m else -1


def saved_checkpoints(root) -> list[str]:
    """The checkpoint folders a training run wrote into its storage folder ``root``, newest step first."""
    if not root or not Path(root).is_dir():
        return []
    found = [p for p in Path(root).iterdir() if p.is_dir() and step_of(p.name) >= 0]
    return [str(p) for p in sorted(found, key=lambda p: (step_of(p.name), p.stat().st_mtime), reverse=True)]


def _newest_first(checkpoint, saved: list[str]):
    """Where to resume, newest step first: Ray Train's latest checkpoint and the run's saved folders
    (Ray Train's first among equals), then (listed only if those fail) the older ones Ray Train kept."""
    import ray.train

    listed = [] if checkpoint is None else [checkpoint]
    listed += [ray.train.Checkpoint(path) for path in saved if checkpoint is None or path != _folder(checkpoint)]
    listed.sort(key=lambda c: (step_of(Path(_folder(c)).name), c is checkpoint), reverse=True)
    yield from listed
    seen = {_folder(c) for c in listed}
    yield from (c for c in reversed(_kept_checkpoints()) if _folder(c) not in seen)


def checkpoint_name(step: int, resumed_from: int, final: bool, taken: set[str] = frozenset()) -> str:
    """The checkpoint's folder name; suffixed when a kept folder has it already (after a fallback the
    run repeats steps, and Ray Train deleting the old entry would delete the new folder too)."""
    base = f"final_step_{step:07d}" if final else f"step_{step:07d}_from_{resumed_from:07d}"
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _rng_state() -> dict:
    """RNG states as tensors and plain lists, so they load with ``torch.load(weights_only=True)``."""
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _load_rows(name: str) -> list[Pair]:
    """Every row of a named Ray Dataset (not split across workers), in a fixed order."""
    import ray.data
    import ray.train

    ray.data.DataContext.get_current().enable_progress_bars = False  # one tiny read per worker
    try:
        shard = ray.train.get_dataset_shard(name)
    except KeyError:
        return []
    if shard is None:
        return []
    rows = []
    for batch in shard.iter_batches(batch_size=1024, batch_format="pandas"):
        for r in batch.itertuples(index=False):
            rows.append(
                Pair(str(r.id), [int(v) for v in r.pos_ids], [int(v) for v in r.pos_mask],
                     [int(v) for v in r.tox_ids], [int(v) for v in r.tox_mask])
            )  # fmt: skip
    rows.sort(key=lambda p: p.id)
    return rows


def _maybe_crash(config: dict, step: int, rank: int, world: int) -> None:
    """Test hook: kills one worker process once, at a given step (marker file = already done)."""
    at, marker = config.get("fail_at_step"), config.get("fail_marker")
    if at is None or step != int(at) or rank != world - 1 or not marker or Path(marker).exists():
        return
    Path(marker).write_text(f"worker rank {rank} killed itself at step {step}\n")
    os._exit(1)


class Window:
    """Metrics accumulated between two reports (per rank; all-reduced when reported).

    Each of the objective's metrics is averaged over the window's steps, weighted by the count the
    objective names for it (``objective.weights``, e.g. L_UT by toxic tokens): a step where that count
    is 0 (benign rows only, or the toxic side not measured) adds nothing, instead of a 0 that would
    pull the average down. Unweighted metrics are plain means over steps.
    """

    def __init__(self, objective: Objective) -> None:
        self.names = list(objective.metrics)
        self.weight_of = dict(objective.weights)
        self.trains_rejected = objective.trains_rejected
        self.sums = dict.fromkeys(self.names, 0.0)  # per-step value x its weight (this rank's share)
        self.weights = dict.fromkeys(self.names, 0.0)  # global counts: the same on every rank
        self.steps = self.tokens = 0
        self.pos_tokens = self.tox_tokens = self.pairs = 0.0  # global counts (already all-reduced per step)
        self.seconds = 0.0
        self.grad_norm = 0.0

    def add(self, out: dict, seconds: float) -> None:
        self.steps += 1
        for k in self.names:
            w = float(out[self.weight_of[k]]) if k in self.weight_of else 1.0
            self.sums[k] += out[k] * w
            self.weights[k] += w
        self.tokens += out["tokens"]
        self.pos_tokens += out["chosen_tokens"]
        self.tox_tokens += out["rejected_tokens"]
        self.pairs += out["pairs"]
        self.seconds += seconds
        self.grad_norm = out["grad_norm"]

    def local(self) -> list[float]:
        """This rank's sums, to all-reduce (SUM) before :meth:`metrics`."""
        return [self.sums[k] for k in self.names] + [float(self.tokens)]

    def metrics(self, reduced: list[float]) -> dict:
        """The window's averages from the all-reduced :meth:`local` sums (``None``: nothing to average)."""
        *sums, tokens = reduced
        out = {k: s / self.weights[k] if self.weights[k] else None for k, s in zip(self.names, sums)}
        return {
            **out,
            "pos_tokens": int(self.pos_tokens), "tox_tokens": int(self.tox_tokens), "pairs": int(self.pairs),
            "supervised_tokens": int(self.pos_tokens + (self.tox_tokens if self.trains_rejected else 0)),
            "tokens": int(tokens), "tokens_per_s": tokens / max(self.seconds, 1e-9),
            "step_time_s": self.seconds / max(self.steps, 1), "grad_norm": self.grad_norm,
        }  # fmt: skip


def train_loop_per_worker(config: dict) -> None:
    """Entry point handed to TorchTrainer; ``config`` is built by :mod:`ptalign_ray.training.stage`."""
    import ray.train

    entered = time.time()
    w = Worker(config)
    tcfg, p = w.tcfg, w.progress
    checkpoint = ray.train.get_checkpoint()
    saved = w.agree(saved_checkpoints(config.get("checkpoint_root")))  # one listing for every rank
    resumed = checkpoint is not None or bool(saved)
    if resumed:
        w.restore(checkpoint, saved)
        p = w.progress
    else:
        torch.manual_seed(tcfg.seed + 7919 * w.rank)
        if "fit_started" in config:  # Ray Train's controller and this worker process starting, imports
            # wall clocks of two processes (of two nodes on a cluster: clock skew, hence the floor at 0)
            p.spent("worker_start", max(0.0, entered - config["fit_started"]))
    p.spent("setup", time.time() - entered)  # model, data, restore
    n = len(w.train_rows)
    total_steps_hint = p.step + math.ceil(max(w.total_samples - p.samples_seen, 0) / w.rows_per_step)

    def report(metrics: dict, save: bool, final: bool = False, again: bool = False) -> None:
        """``again``: hands in a finished state once more (its record is already in the history)."""
        record = metrics if again else {**metrics, "resumed_from_step": p.resumed_from_step, "world_size": w.world,
                                        "time": time.time()}  # fmt: skip
        if w.rank == 0 and not again:
            p.history.append(record)
        if not save:
            ray.train.report(record)
            return
        tmp = Path(tempfile.mkdtemp(prefix="ptalign-ckpt-"))
        try:
            w.save(tmp, final)
            name = checkpoint_name(p.step, p.resumed_from_step, final, w.taken_names)
            ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)), checkpoint_dir_name=name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def evaluate() -> dict:
        t = time.perf_counter()
        held = w.evaluate()
        p.spent("holdout", time.perf_counter() - t)
        return held

    if not resumed and w.holdout_rows:
        report({"step": 0, "epoch": 0, **evaluate()}, save=False)
    if p.epoch >= tcfg.epochs:  # resumed from a final checkpoint Ray Train never registered: hand it in
        report(p.history[-1] if p.history else {"step": p.step, "epoch": p.epoch}, save=True, final=True, again=True)

    window = Window(w.objective)
    while p.epoch < tcfg.epochs:
        order = epoch_order(n, tcfg.seed, p.epoch)
        mine, consumed = step_rows(order, p.position, w.rows_per_step, w.world, w.rank)
        rows = [w.train_rows[i] for i in mine]
        lr = step_lr(p.samples_seen, consumed, w.total_samples, tcfg.learning_rate, tcfg.warmup_ratio)
        for group in w.optimizer.param_groups:
            group["lr"] = lr
        step = p.step + 1
        is_report = step % tcfg.report_every_steps == 0
        is_ckpt = step % tcfg.checkpoint_every_steps == 0
        epoch_end = p.position + consumed >= n
        last = epoch_end and p.epoch + 1 >= tcfg.epochs
        t0 = time.perf_counter()
        n_micro = micro_batches(consumed, w.world, tcfg.batch_size)
        out = w.train_step(rows, measure_toxic=is_report or is_ckpt or epoch_end, n_micro=n_micro)
        window.add(out, time.perf_counter() - t0)
        p.step, p.samples_seen, p.position = step, p.samples_seen + consumed, p.position + consumed
        _maybe_crash(config, step, w.rank, w.world)

        held: dict = {}
        if epoch_end:
            p.epoch, p.position = p.epoch + 1, 0
            held = evaluate()
        if is_report or is_ckpt or epoch_end:
            metrics = window.metrics(w.all_reduce(window.local()))
            head = {"step": step, "epoch": p.epoch, "samples_seen": p.samples_seen, "lr": lr}
            t = time.perf_counter()
            report({**head, **metrics, "total_steps": total_steps_hint, **held}, save=(is_ckpt or last), final=last)
            if is_ckpt and not last:  # the final checkpoint's time is in the stage's "other" (it holds these)
                p.spent("checkpoint", time.perf_counter() - t)
            window = Window(w.objective)
