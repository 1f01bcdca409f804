"""Batch engine actors survive a lost node: Ray restarts them (engine.max_restarts) and retries the
calls in flight, and a restarted actor, which has no engine yet, starts one on its first call, with
the model that call names. A running engine takes another model's weights in place when its
architecture and tokenizer match; otherwise a new engine starts."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

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

    monkeypatch.setattr(engine, "batch_llm", fake_llm)
    monkeypatch.setattr(engine, "direct_async_generate", fake_generate)
    actor = engine.EngineActor("model-path", ModelConfig(), EngineConfig())  # as Ray restarts it: no use()

    async def calls():
        return await asyncio.gather(*(actor.generate([[1, 2]], [{"max_tokens": 1}]) for _ in range(5)))

    outs = asyncio.run(calls())
    assert started == ["model-path"]  # one engine for the five retried batches
    assert outs == [[("engine1:2", 1)]] * 5
    assert asyncio.run(actor.use()) == ("", 0.0) and started == ["model-path"]  # already running
    # an actor that served a trained model when it died comes back with that model, not its first one
    again = engine.EngineActor("model-path", ModelConfig(), EngineConfig())
    asyncio.run(again.generate([[1]], [{"max_tokens": 1}], "run/training/merged"))
    assert started[-1] == "run/training/merged" and again.path == "run/training/merged"


def test_a_running_engine_takes_another_models_weights_in_place(monkeypatch):
    calls = []

    class FakeLLM:
        async def collective_rpc(self, method, kwargs=None):
            calls.append((method, kwargs))

        async def reset_prefix_cache(self):
            calls.append(("reset_prefix_cache", None))

    async def fake_generate(llm, ids, params, request_id, lora=None):
        return "ok", 1

    monkeypatch.setattr(engine, "batch_llm", lambda *a: FakeLLM())
    monkeypatch.setattr(engine, "direct_async_generate", fake_generate)
    actor = engine.EngineActor("base", ModelConfig(), EngineConfig())
    assert asyncio.run(actor.use())[0] == "start" and calls == []
    assert asyncio.run(actor.use("base")) == ("", 0.0)
    how, _ = asyncio.run(actor.use("merged"))
    # the weights are reloaded from the new folder, then the prefix cache (KV of the old weights) dropped
    assert how == "swap" and actor.path == "merged"
    assert calls == [("reload_weights", {"weights_path": "merged"}), ("reset_prefix_cache", None)]


def test_the_actor_renders_chats_with_the_chat_template_and_skips_prompts_that_do_not_fit(monkeypatch, tiny_model):
    from ptalign_ray.chat_template import load_tokenizer, render_ids

    sent = []

    async def fake_generate(self, prompt_ids, params, model_path=None):
        sent.append((prompt_ids, params))
        return [(f"answer{i}", 3) for i in range(len(prompt_ids))]

    async def running(self, model_path=None):
        return "", 0.0

    monkeypatch.setattr(engine.EngineActor, "generate", fake_generate)
    monkeypatch.setattr(engine.EngineActor, "use", running)
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


def _checkpoint(d, config: dict, tokenizer: str = "tok") -> str:
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    (d / "tokenizer.json").write_text(tokenizer)
    (d / "model.safetensors").write_bytes(os.urandom(16))  # weights differ: that is the point
    return str(d)


def test_weights_swappable_needs_the_same_config_and_tokenizer(tmp_path):
    from ptalign_ray.engine import weights_swappable

    arch = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "torch_dtype": "float32"}
    base = _checkpoint(tmp_path / "base", {**arch, "_name_or_path": "hub/base"})
    merged = _checkpoint(tmp_path / "merged", {**arch, "_name_or_path": "/runs/x", "transformers_version": "5"})
    assert weights_swappable(base, merged)  # provenance keys differ only
    assert not weights_swappable(base, _checkpoint(tmp_path / "wide", {**arch, "hidden_size": 128}))
    assert not weights_swappable(base, _checkpoint(tmp_path / "bf16", {**arch, "torch_dtype": "bfloat16"}))
    assert not weights_swappable(base, _checkpoint(tmp_path / "tok", arch, tokenizer="other"))
    (Path(merged) / "generation_config.json").write_text("{}")  # vLLM's defaults come from it: must match
    assert not weights_swappable(base, merged)
    assert not weights_swappable(base, "HuggingFaceTB/SmolLM2-135M-Instruct")  # not a local folder


def test_engines_for_reuses_swaps_weights_or_starts(monkeypatch):
    from ptalign_ray import generation

    started, stopped, swapped = [], [], []

    def fake_start(path, model, cfg, while_starting=None, actors=None):
        assert while_starting is generation.warm_up_ray_data  # Ray Data's set-up overlaps the engine start
        assert actors is None  # none were created early
        started.append(path)
        return [f"actor:{path}"], 1.5

    def fake_swap(actors, path):
        swapped.append((tuple(actors), path))
        return 0.25

    monkeypatch.setattr(generation, "start_engine_actors", fake_start)
    monkeypatch.setattr(generation, "swap_engine_weights", fake_swap)
    monkeypatch.setattr(generation, "weights_swappable", lambda a, b: not b.startswith("other"))
    monkeypatch.setattr(generation, "stop_engine_actors", stopped.extend)
    monkeypatch.setattr(generation, "_POOL", None)
    monkeypatch.setattr(generation, "ENGINE_LOADS", [])
    cfg, model = EngineConfig(), ModelConfig()
    assert generation.engines_for("base", cfg, model) == ["actor:base"]
    assert generation.engines_for("base", cfg, model) == ["actor:base"]  # running: nothing happens
    assert generation.engines_for("merged", cfg, model) == ["actor:base"]  # same engines, new weights
    assert swapped == [(("actor:base",), "merged")] and started == ["base"] and stopped == []
    assert generation.engines_for("other", cfg, model) == ["actor:other"]  # not swappable: a new engine
    assert stopped == ["actor:base"]
    assert generation.engines_for("merged", EngineConfig(batch_size=7), model) == ["actor:merged"]  # other engine args
    assert [(e.path, e.seconds, e.swapped) for e in generation.ENGINE_LOADS] == [
        ("base", 1.5, False), ("merged", 0.25, True), ("other", 1.5, False), ("merged", 1.5, False)
    ]  # fmt: skip
    assert generation.engine_load_seconds(1) == 3.25
    generation.release_engines()
    assert stopped == ["actor:base", "actor:other", "actor:merged"]


def test_engines_created_early_are_used_by_the_first_start_with_their_config(monkeypatch):
    """`ptalign run` creates the engine actors while the driver materialises the embedded model."""
    from ptalign_ray import generation

    created, prepared, stopped, started = [], [], [], []

    class Actor:
        def __init__(self, name):
            self.name = name
            self.prepare = type("Method", (), {"remote": lambda _: prepared.append(name)})()

    def fake_create(model, cfg, model_path=None):
        assert model_path is None  # not known yet
        created.append(len(created))
        return [Actor(f"early{len(created)}")]

    def fake_start(path, model, cfg, while_starting=None, actors=None):
        started.append((path, [a.name for a in actors] if actors else None))
        return actors or [Actor(f"new:{path}")], 1.0

    monkeypatch.setattr(generation, "create_engine_actors", fake_create)
    monkeypatch.setattr(generation, "start_engine_actors", fake_start)
    monkeypatch.setattr(generation, "stop_engine_actors", lambda actors: stopped.extend(a.name for a in actors))
    monkeypatch.setattr(generation, "_POOL", None)
    monkeypatch.setattr(generation, "_EARLY", None)
    monkeypatch.setattr(generation, "ENGINE_LOADS", [])
    cfg, model = EngineConfig(), ModelConfig()
    generation.create_engines_early(cfg, model)
    generation.create_engines_early(cfg, model)  # once
    assert created == [0] and prepared == ["early1"]
    assert [a.name for a in generation.engines_for("base", cfg, model)] == ["early1"]
    assert started == [("base", ["early1"])] and stopped == []
    generation.create_engines_early(cfg, model)  # engines run: nothing to do
    assert created == [0]
    generation.release_engines()
    assert stopped == ["early1"]

    generation.create_engines_early(cfg, model)  # created for another engine config: stopped, not used
    generation.engines_for("base", EngineConfig(batch_size=7), model)
    assert stopped == ["early1", "early2"] and started[-1] == ("base", None)
    generation.create_engines_early(EngineConfig(batch_size=7), model)  # a pool runs: nothing
    generation.release_engines()
    assert stopped == ["early1", "early2", "new:base"]


class _StandInEngine:
    """Just enough of vLLM's LLMEngine for SteppedLLM: a request finishes after its ``steps`` steps."""

    def __init__(self):
        from types import SimpleNamespace

        self.live: dict[str, int] = {}
        self.aborted: list[str] = []
        self.calls: list[str] = []
        self.broken = False
        self.engine_core = SimpleNamespace(shutdown=lambda: self.calls.append("shutdown"))

    def add_request(self, rid, prompt, params, lora_request=None):
        if params["steps"] < 1:
            raise ValueError("max_tokens must be at least 1")  # vLLM validates a request when it is added
        self.live[rid] = params["steps"]

    def abort_request(self, ids):
        for rid in ids:
            self.live.pop(rid)
            self.aborted.append(rid)

    def has_unfinished_requests(self):
        return bool(self.live)

    def step(self):
        import time
        from types import SimpleNamespace

        if self.broken:
            raise RuntimeError("engine core died")
        time.sleep(0.001)
        done = []
        for rid in list(self.live):
            self.live[rid] -= 1
            if self.live[rid] == 0:
                del self.live[rid]
                done.append(SimpleNamespace(request_id=rid, finished=True, prompt=f"answer to {rid}"))
        return done

    def collective_rpc(self, method, kwargs=None):
        self.calls.append(method)
        return [method]

    def reset_prefix_cache(self):
        self.calls.append("reset_prefix_cache")
        return True


async def _final(llm, rid, steps):
    async for out in llm.generate(None, {"steps": steps}, rid):
        return out.prompt


def test_stepped_engine_answers_concurrent_callers_and_a_rejected_request_fails_alone():
    fake = _StandInEngine()
    llm = engine.SteppedLLM(lambda: fake)

    async def main():
        jobs = [_final(llm, f"r{i}", steps) for i, steps in enumerate([3, 1, 0, 5])]
        return await asyncio.gather(*jobs, return_exceptions=True)

    outs = asyncio.run(main())
    assert outs[0] == "answer to r0" and outs[1] == "answer to r1" and outs[3] == "answer to r3"
    assert isinstance(outs[2], ValueError)  # only the request vLLM rejected
    assert asyncio.run(llm.collective_rpc("reload_weights", {"weights_path": "m"})) == ["reload_weights"]
    assert asyncio.run(llm.reset_prefix_cache()) is True
    llm.shutdown()
    assert fake.calls == ["reload_weights", "reset_prefix_cache", "shutdown"]


def test_stepped_engine_aborts_a_cancelled_request_and_fails_every_caller_when_it_dies():
    fake = _StandInEngine()
    llm = engine.SteppedLLM(lambda: fake)

    async def cancel_one():
        task = asyncio.ensure_future(_final(llm, "long", 10**9))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return await _final(llm, "short", 2)  # the engine goes on

    assert asyncio.run(cancel_one()) == "answer to short"
    assert fake.aborted == ["long"] and not fake.live

    async def dies():
        waiting = asyncio.ensure_future(_final(llm, "pending", 10**9))
        await asyncio.sleep(0.05)
        fake.broken = True
        return await asyncio.gather(waiting, return_exceptions=True)

    [err] = asyncio.run(dies())
    assert isinstance(err, RuntimeError) and "engine core died" in str(err)
    with pytest.raises(RuntimeError, match="the vLLM engine stopped"):
        asyncio.run(_final(llm, "later", 1))


def test_stepped_engine_that_cannot_be_built_says_so():
    def build():
        raise OSError("no model files")

    with pytest.raises(RuntimeError, match="did not start: OSError"):
        engine.SteppedLLM(build)


def test_in_process_engines_by_default_on_one_cpu_worker_only():
    assert engine.runs_in_process(EngineConfig())
    assert not engine.runs_in_process(EngineConfig(device="gpu"))
    assert not engine.runs_in_process(EngineConfig(tensor_parallel_size=2))
    assert engine.runs_in_process(EngineConfig(device="gpu", in_process=True))
    assert not engine.runs_in_process(EngineConfig(in_process=False))
