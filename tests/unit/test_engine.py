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


def test_the_actor_renders_chats_with_the_chat_template_and_skips_prompts_that_do_not_fit(monkeypatch, tiny_model):
    from ptalign_ray.chat_template import load_tokenizer, render_ids

    sent = []

    async def fake_generate(self, prompt_ids, params):
        sent.append((prompt_ids, params))
        return [(f"answer{i}", 3) for i in range(len(prompt_ids))]

    monkeypatch.setattr(engine.EngineActor, "generate", fake_generate)
    tok = load_tokenizer(str(tiny_model))
    short = [{"role": "user", "content": "Hi"}]
    fits = len(render_ids(tok, short, response_prefix="Sure"))
    model = ModelConfig(name_or_path=str(tiny_model), max_model_len=fits + 5)
    actor = engine.EngineActor(str(tiny_model), model, EngineConfig())
    chats = [(short, "Sure"), ([{"role": "user", "content": "word " * 200}], ""), (short, "")]
    out = asyncio.run(actor.generate_chats(chats, [{"max_tokens": 48, "temperature": 0.0}] * 3))
    assert [o[3] for o in out] == [False, True, False]  # the long prompt never reaches the engine
    assert out[1][:3] == ("", 0, len(render_ids(tok, chats[1][0])))
    ((ids, params),) = sent
    assert ids == [render_ids(tok, short, response_prefix="Sure"), render_ids(tok, short)]
    assert params[0]["max_tokens"] == 5  # capped at the context left after the prompt
    assert out[0] == ("answer0", 3, fits, False) and out[2][0] == "answer1"


def test_engines_for_starts_the_next_model_with_this_one_and_reuses_it(monkeypatch):
    import ray

    from ptalign_ray import generation

    started, stopped = [], []

    def fake_start(paths, model, cfg):
        started.append(tuple(paths))
        return {p: [f"actor:{p}"] for p in paths}, 1.5

    free = {"CPU": 4.0}
    monkeypatch.setattr(generation, "start_engine_actors", fake_start)
    monkeypatch.setattr(ray, "available_resources", lambda: dict(free))
    monkeypatch.setattr(generation, "stop_engine_actors", stopped.extend)
    monkeypatch.setattr(generation, "_ENGINES", {})
    monkeypatch.setattr(generation, "ENGINE_STARTS", [])
    cfg, model = EngineConfig(), ModelConfig()
    assert generation.engines_for("base", cfg, model) == ["actor:base"]
    assert generation.engines_for("base", cfg, model, start_with=["a"]) == ["actor:base"]  # running: nothing starts
    assert generation.engines_for("a", cfg, model, start_with=["b"]) == ["actor:a"]
    assert generation.engines_for("b", cfg, model) == ["actor:b"]  # started together with a
    assert started == [("base",), ("a", "b")] and stopped == ["actor:base"]
    assert generation.ENGINE_STARTS == [(("base",), 1.5), (("a", "b"), 1.5)]
    generation.release_engines()
    assert sorted(stopped) == ["actor:a", "actor:b", "actor:base"]
    free["CPU"] = 1.0  # room for one model's engine only: the next one waits for its own turn
    assert generation.engines_for("c", cfg, model, start_with=["d"]) == ["actor:c"]
    assert started[-1] == ("c",)
    gpu = EngineConfig(device="gpu")
    free.update(CPU=8.0, GPU=1.0)
    generation.engines_for("e", gpu, model, start_with=["f"])
    assert started[-1] == ("e",)  # each needs the GPU
