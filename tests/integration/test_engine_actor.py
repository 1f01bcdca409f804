"""The batch engine actor on a real vLLM-CPU engine (tiny model, started through Ray by the test):
vLLM's engine core in the actor's own process (``engine.in_process``, the CPU default) answers as
vLLM's AsyncLLM does, also in an actor created and importing vLLM before its model was named (as
`ptalign run` creates it while materialising the embedded model), serves concurrent calls, and a
request vLLM rejects fails alone."""

from __future__ import annotations

import pytest

from ptalign_ray.config import parse_config
from ptalign_ray.engine import create_engine_actors, start_engine_actors, stop_engine_actors

pytestmark = pytest.mark.integration

PROMPTS = [[1, *range(100 + 7 * i, 124 + 7 * i)] for i in range(6)]
GREEDY = {"max_tokens": 8, "temperature": 0.0}


def _engine_config(tiny_model, in_process: bool):
    return parse_config({
        "model": {"name_or_path": str(tiny_model), "dtype": "float32", "max_model_len": 256},
        "engine": {"max_num_seqs": 16, "cpu_kvcache_space_gib": 1, "in_process": in_process},
    })  # fmt: skip


def _answers(actor) -> list:
    """Three concurrent calls of two prompts each (the engine batches them together)."""
    import ray

    calls = [actor.generate.remote(PROMPTS[i : i + 2], [GREEDY] * 2) for i in range(0, len(PROMPTS), 2)]
    return [answer for call in ray.get(calls) for answer in call]


def test_in_process_engine_answers_as_async_llm_and_survives_a_rejected_request(tiny_model, ray_local):
    import ray

    answers = {}
    for in_process in (True, False):
        cfg = _engine_config(tiny_model, in_process)
        early = None
        if in_process:  # created before the model is known; vLLM imported first
            early = create_engine_actors(cfg.model, cfg.engine)
            assert all(seconds > 0 for seconds in ray.get([a.prepare.remote() for a in early]))
        actors, _ = start_engine_actors(str(tiny_model), cfg.model, cfg.engine, actors=early)
        assert early is None or actors == early
        try:
            answers[in_process] = _answers(actors[0])
            # a prompt longer than the context: vLLM rejects that request, the engine goes on
            with pytest.raises(ray.exceptions.RayTaskError):
                ray.get(actors[0].generate.remote([[1] * 300], [GREEDY]))
            assert ray.get(actors[0].generate.remote(PROMPTS[:1], [GREEDY])) == answers[in_process][:1]
        finally:
            stop_engine_actors(actors)
    assert all(n == GREEDY["max_tokens"] or text for text, n in answers[True])
    assert answers[True] == answers[False]
