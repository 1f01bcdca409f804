"""Batch engine actors survive a lost node: Ray restarts them (engine.max_restarts) and retries the
calls in flight, and a restarted actor, which has no engine yet, starts one on its first call."""

from __future__ import annotations

import asyncio

from ptalign_ray import engine
from ptalign_ray.config import EngineConfig, ModelConfig


def test_engine_actors_are_restarted_and_their_calls_retried():
    for device in ("cpu", "gpu"):
        opts = engine.engine_actor_options(EngineConfig(device=device, max_restarts=2))
        assert opts["max_restarts"] == 2 and opts["max_task_retries"] == 2, device
    assert engine.engine_actor_options(EngineConfig(max_restarts=0))["max_restarts"] == 0  # fail at once


def test_a_restarted_actor_starts_one_engine_for_its_concurrent_calls(monkeypatch):
    started = []

    async def fake_generate(llm, ids, params, request_id, lora=None):
        await asyncio.sleep(0.01)
        return f"{llm}:{len(ids)}", 1

    def fake_llm(*args):
        started.append(args[0])
        return f"engine{len(started)}"

    monkeypatch.setattr(engine, "direct_async_llm", fake_llm)
    monkeypatch.setattr(engine, "direct_async_generate", fake_generate)
    actor = engine.EngineActor("model-path", ModelConfig(), EngineConfig())  # as Ray restarts it: no start()

    async def calls():
        return await asyncio.gather(*(actor.generate([[1, 2]], [{"max_tokens": 1}]) for _ in range(5)))

    outs = asyncio.run(calls())
    assert started == ["model-path"]  # one engine for the five retried batches
    assert outs == [[("engine1:2", 1)]] * 5
    assert asyncio.run(actor.start()) == 0.0 and started == ["model-path"]  # already running
