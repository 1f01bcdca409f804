"""The CPU sampling replacements (engine.register_cpu_sampler) give vLLM's own logits: top-p from
top-k candidates, and a repetition penalty applied to the tokens seen, against vLLM 0.32's
whole-vocabulary functions on the same inputs."""

from __future__ import annotations

import torch
from vllm.v1.sample.ops.penalties import apply_all_penalties
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

from ptalign_ray import engine

VOCAB = 5000


def whole_vocab(logits, k, p):
    return apply_top_k_top_p_pytorch(logits, k, p, allow_cpu_sync=True)


def _logits(rows: int, scale: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(rows, VOCAB, generator=gen) * scale.unsqueeze(1)


def _same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    kept = ~torch.isinf(want)
    assert torch.allclose(got[kept], want[kept])


def test_top_p_from_candidates_matches_the_whole_vocabulary_sort():
    # peaked rows (nucleus within 256 candidates), flat rows (nucleus beyond 4096: the sort), p = 1 rows
    scale = torch.tensor([8.0, 6.0, 4.0, 0.05, 0.01, 5.0, 3.0, 2.0])
    p = torch.tensor([0.95, 0.5, 0.9, 0.95, 0.99, 1.0, 0.8, 0.7])
    logits = _logits(len(p), scale)
    want = whole_vocab(logits.clone(), None, p)
    got = engine.nucleus_from_candidates(logits.clone(), None, p, whole_vocab)
    _same(got, want)
    kept = (~torch.isinf(got)).sum(dim=1)
    assert kept[0] < 256 and kept[3] > 4096 and kept[5] == VOCAB  # each path was taken


def test_top_k_and_no_top_p_go_to_vllm():
    logits = _logits(3, torch.tensor([3.0, 3.0, 3.0]))
    k = torch.tensor([5, 10, 20])
    _same(engine.nucleus_from_candidates(logits.clone(), k, torch.tensor([0.9] * 3), whole_vocab),
          whole_vocab(logits.clone(), k, torch.tensor([0.9] * 3)))  # fmt: skip
    assert torch.equal(engine.nucleus_from_candidates(logits.clone(), None, None, whole_vocab), logits)


def test_repetition_penalty_on_seen_tokens_matches_the_dense_masks():
    logits = _logits(3, torch.tensor([3.0, 3.0, 3.0]))
    prompts = torch.tensor([[5, 7, 7, VOCAB], [1, 2, 3, 4], [9, VOCAB, VOCAB, VOCAB]])  # padded with vocab size
    outputs = [[7, 11, 11], [], [9, 4999, -1]]  # -1: an async placeholder
    zeros = torch.zeros(3)
    rep = torch.tensor([1.1, 1.3, 1.0])
    want = apply_all_penalties(logits.clone(), prompts, zeros, zeros, rep, [list(o) for o in outputs])
    got = engine.repetition_on_seen_tokens(logits.clone(), prompts, zeros, zeros, rep, outputs, apply_all_penalties)
    assert torch.allclose(got, want)
    assert not torch.equal(got, logits)


def test_presence_or_frequency_penalties_go_to_vllm():
    logits = _logits(2, torch.tensor([3.0, 3.0]))
    prompts = torch.tensor([[5, 7], [1, 2]])
    outputs = [[7, 7, 8], [3]]
    args = (torch.tensor([0.5, 0.0]), torch.tensor([0.0, 0.2]), torch.tensor([1.1, 1.0]))
    want = apply_all_penalties(logits.clone(), prompts, *args, [list(o) for o in outputs])
    got = engine.repetition_on_seen_tokens(logits.clone(), prompts, *args, outputs, apply_all_penalties)
    assert torch.allclose(got, want)


def test_the_plugin_is_asked_for_by_cpu_engines_only():
    from ptalign_ray.config import EngineConfig

    assert engine.engine_env(EngineConfig(device="cpu"))[engine.CPU_SAMPLER_ENV] == "1"
    assert engine.CPU_SAMPLER_ENV not in engine.engine_env(EngineConfig(device="gpu"))
