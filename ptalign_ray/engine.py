"""The one module that touches vLLM (long-lived engine actors, Ray Serve LLM configs, or directly).

vLLM and Ray LLM move fast and version skew is the most common failure in this ecosystem, so every
engine argument and environment variable is decided here and nowhere else. Prompts arrive as token
ids rendered by :mod:`ptalign_ray.chat_template`, so there is exactly one chat-template rendering.
Batch generation (synthesis, refinement, evaluation) goes through :class:`EngineActor`: one engine
per model, started once per process and fed by Ray Data (:mod:`ptalign_ray.generation`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

from ptalign_ray.config import EngineConfig, ModelConfig

# Keep vLLM and its collective setup on loopback unless a cluster says otherwise.
LOOPBACK_ENV = {"VLLM_HOST_IP": "127.0.0.1"}


def engine_env(engine: EngineConfig) -> dict[str, str]:
    """Environment variables every vLLM engine process needs."""
    env = {"VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}
    if engine.device == "cpu":
        env.update(LOOPBACK_ENV)
        env["VLLM_CPU_KVCACHE_SPACE"] = str(engine.cpu_kvcache_space_gib)
        # vLLM-CPU reserves a core for itself by default; on small machines that halves throughput.
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        # top-p and repetition penalty without a whole-vocabulary pass per step (register_cpu_sampler)
        env[CPU_SAMPLER_ENV] = os.environ.get(CPU_SAMPLER_ENV, "1")
    return env


def engine_kwargs(model: ModelConfig, engine: EngineConfig) -> dict[str, Any]:
    """Arguments of vLLM's engine (vllm.LLM / AsyncEngineArgs) for this config."""
    kwargs: dict[str, Any] = dict(
        dtype=model.dtype,
        max_model_len=model.max_model_len,
        tensor_parallel_size=engine.tensor_parallel_size,
        pipeline_parallel_size=engine.pipeline_parallel_size,
        max_num_seqs=engine.max_num_seqs,
        trust_remote_code=model.trust_remote_code,
        enforce_eager=engine.device == "cpu" if engine.enforce_eager is None else engine.enforce_eager,
    )
    if engine.device == "gpu":
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
        kwargs["enable_prefix_caching"] = True
    return kwargs


def _placement(engine: EngineConfig) -> Optional[dict]:
    if engine.device == "cpu":
        return {"bundles": [{"CPU": engine.cpus_per_engine}] * engine.workers}
    return None  # Ray LLM's GPU default: one GPU bundle per TP/PP worker


def sampling_params(params: dict) -> dict:
    """Per-row sampling parameters for a processor row (plain dict, vLLM names).

    No per-request seed: one seed shared by a batch makes answers alike, and per-request seeds
    crash large batches on vLLM-CPU.
    """
    return {k: v for k, v in params.items() if k != "seed"} | {"detokenize": True}


# vLLM only accepts these values for max_lora_rank.
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def direct_llm(model_path: str, model: ModelConfig, engine: EngineConfig, lora_rank: Optional[int] = None):
    """An in-process vllm.LLM with the same arguments (benchmarks' baseline).

    ``lora_rank``: enable run-time LoRA adapters up to that rank (see :func:`lora_request`).
    """
    os.environ.update(engine_env(engine))
    from vllm import LLM

    kwargs = engine_kwargs(model, engine)
    if lora_rank is not None:
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank(lora_rank), max_loras=1)
    return LLM(model=model_path, **kwargs)


def max_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of this rank."""
    fits = [r for r in _LORA_RANKS if r >= rank]
    if not fits:
        raise ValueError(f"LoRA rank {rank} is above vLLM's maximum {_LORA_RANKS[-1]}")
    return fits[0]


def lora_request(adapter_dir: str, name: str = "aligned", adapter_id: int = 1):
    """A vLLM LoRARequest for a peft adapter folder (e.g. RUN/training/adapter)."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=name, lora_int_id=adapter_id, lora_path=str(adapter_dir))


def direct_generate(llm, prompt_ids: list[list[int]], params: list[dict], lora=None) -> list[tuple[str, int]]:
    """Generates with an in-process vllm.LLM from token-id prompts; returns (text, n_tokens).

    ``lora``: a :func:`lora_request` applied to every prompt (the engine needs ``lora_rank``).
    """
    from vllm import SamplingParams, TokensPrompt

    outs = llm.generate(
        [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids],
        [SamplingParams(**sampling_params(p)) for p in params],
        use_tqdm=False,
        lora_request=lora,
    )
    return [(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in outs]


def serve_llm_config(
    model_id: str,
    weights_path: str,
    model: ModelConfig,
    engine: EngineConfig,
    deployment: dict[str, Any],
    adapters: Sequence[tuple[str, str, int]] = (),
    default_max_tokens: Optional[int] = None,
) -> dict[str, Any]:
    """Keyword arguments of ``ray.serve.llm.LLMConfig`` for one vLLM engine deployment.

    ``adapters``: (API name, local peft adapter folder, rank) applied at run time. They are handed to
    vLLM as static ``lora_modules`` (loaded once at engine start, addressed by name), because Ray
    2.60's ``lora_config.dynamic_lora_loading_path`` only accepts s3:// / gs:// / azure:// URIs.
    ``deployment``: Serve deployment options (autoscaling, ongoing-request limits).
    ``default_max_tokens``: what a request that names no max_tokens gets (vLLM's default would be
    the whole remaining context); vLLM still caps it at the context left after the prompt.
    """
    kwargs = engine_kwargs(model, engine)
    if default_max_tokens is not None:
        kwargs["override_generation_config"] = {"max_new_tokens": int(default_max_tokens)}
    if adapters:
        kwargs.update(
            enable_lora=True,
            max_lora_rank=max_lora_rank(max(rank for _, _, rank in adapters)),
            max_loras=len(adapters),
            lora_modules=[{"name": name, "path": path, "base_model_name": model_id} for name, path, _ in adapters],
        )
    deployment = dict(deployment)
    cfg: dict[str, Any] = dict(
        model_loading_config={"model_id": model_id, "model_source": weights_path},
        engine_kwargs=kwargs,
        runtime_env={"env_vars": engine_env(engine)},
        log_engine_metrics=False,
    )
    if engine.device == "cpu":
        cfg["placement_group_config"] = _placement(engine)
        # The replica actor only drives the engine; its engine bundle holds the CPU it computes on.
        deployment.setdefault("ray_actor_options", {}).setdefault("num_cpus", 0)
    elif engine.accelerator_type:
        cfg["accelerator_type"] = engine.accelerator_type
    cfg["deployment_config"] = deployment
    return cfg


def direct_async_llm(
    model_path: str, model: ModelConfig, engine: EngineConfig, lora_rank: Optional[int] = None, max_loras: int = 1
):
    """An in-process vLLM AsyncLLM with the arguments the Serve deployments get (serving benchmark's
    baseline: the same engine without Ray Serve, HTTP or the ingress in front)."""
    os.environ.update(engine_env(engine))
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    kwargs = engine_kwargs(model, engine)
    if lora_rank is not None:
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank(lora_rank), max_loras=max_loras)
    return AsyncLLM.from_engine_args(AsyncEngineArgs(model=model_path, **kwargs))


async def direct_async_generate(
    llm, prompt_ids: list[int], params: dict, request_id: str, lora=None
) -> tuple[str, int]:
    """One request through an in-process AsyncLLM, final output only (as a non-streaming HTTP call)."""
    from vllm import SamplingParams, TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    sp = SamplingParams(**sampling_params(params), output_kind=RequestOutputKind.FINAL_ONLY)
    final = None
    async for out in llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), sp, request_id, lora_request=lora):
        final = out
    return final.outputs[0].text, len(final.outputs[0].token_ids)


def runs_in_process(engine: EngineConfig) -> bool:
    """Whether batch engine actors run vLLM's engine core in their own process (engine.in_process)."""
    if engine.in_process is not None:
        return engine.in_process
    return engine.device == "cpu" and engine.workers == 1


def batch_llm(model_path: str, model: ModelConfig, engine: EngineConfig):
    """The engine an :class:`EngineActor` drives: :class:`SteppedLLM` in its own process, or vLLM's
    AsyncLLM with its engine-core process (:func:`runs_in_process`). Both take the same calls."""
    if not runs_in_process(engine):
        return direct_async_llm(model_path, model, engine)
    os.environ.update(engine_env(engine))
    # LLMEngine starts its engine core in another process unless this is off (vllm.envs reads it lazily)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm.engine.arg_utils import EngineArgs

    from ptalign_ray.ray_runtime import usable_cores

    kwargs = engine_kwargs(model, engine)
    kwargs["distributed_executor_backend"] = "uni" if engine.workers == 1 else "mp"
    threads = None
    if engine.device == "cpu":  # as vLLM sizes a worker process: the cores it may run on, less those reserved
        threads = max(1, usable_cores() - int(os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")))
    args = EngineArgs(model=model_path, **kwargs)
    return SteppedLLM(lambda: _in_process_engine(args, threads))


def _in_process_engine(engine_args, threads: Optional[int]):
    """vLLM's LLMEngine with its engine core (and, with one worker, the worker) in this process."""
    import torch
    from vllm.v1.engine.llm_engine import LLMEngine

    if threads:  # before the build: vLLM-CPU turns torch.set_num_threads into a no-op
        torch.set_num_threads(threads)
    return LLMEngine.from_engine_args(engine_args, enable_multiprocessing=False)


class SteppedLLM:
    """vLLM's LLMEngine with its engine core in this process, stepped by one thread, behind the subset
    of AsyncLLM's interface that :class:`EngineActor` uses (``generate``, ``collective_rpc``,
    ``reset_prefix_cache``, ``shutdown``).

    Why: on CPU, AsyncLLM starts two more processes (engine core, worker) that each import vLLM; in
    the actor's own process the engine starts in 8.6 s instead of 19.5 s at the same tokens/s
    (bench/engine_in_process.py). Only the stepping thread touches the engine: callers hand it
    requests and calls through a queue and await futures that it resolves.
    """

    def __init__(self, build: Callable[[], Any]):
        """``build``: makes the engine (vLLM's LLMEngine, or a stand-in in tests); called in the stepping
        thread, since vLLM-CPU sets up its OpenMP threads in the thread that builds it (steps from
        another thread ran at 0.7x the tokens/s, measured on the 2-core CPU)."""
        import queue
        import threading

        self.engine = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._waiting: dict[str, tuple] = {}  # request id -> (loop, future); the stepping thread's own
        self._error: Optional[BaseException] = None
        built = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(build, built), name="vllm-step", daemon=True)
        self._thread.start()
        built.wait()
        if self.engine is None:
            raise RuntimeError(f"the vLLM engine did not start: {self._error!r}") from self._error

    # -- callers (any thread, usually the actor's event loop)

    def _send(self, item: tuple) -> None:
        if self._error is not None:
            raise RuntimeError(f"the vLLM engine stopped: {self._error!r}") from self._error
        self._inbox.put(item)
        self._wake.set()
        if self._error is not None:  # stopped while this was queued: nobody else will answer it
            self._fail_all(self._error)

    async def _call(self, fn: Callable):
        import asyncio

        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._send(("call", fn, loop, fut))
        return await fut

    async def generate(self, prompt, sampling_params, request_id: str, lora_request=None):
        """The request's final output (one item, as AsyncLLM yields with RequestOutputKind.FINAL_ONLY)."""
        import asyncio

        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._send(("add", request_id, prompt, sampling_params, lora_request, loop, fut))
        try:
            out = await fut
        except asyncio.CancelledError:
            self._inbox.put(("abort", request_id))
            self._wake.set()
            raise
        yield out

    async def collective_rpc(self, method: str, kwargs: Optional[dict] = None):
        return await self._call(lambda llm: llm.collective_rpc(method, kwargs=kwargs))

    async def reset_prefix_cache(self) -> bool:
        return await self._call(lambda llm: llm.reset_prefix_cache())

    def shutdown(self) -> None:
        self._inbox.put(("stop",))
        self._wake.set()
        self._thread.join(timeout=30)
        if self.engine is not None:
            self.engine.engine_core.shutdown()

    # -- the stepping thread

    def _run(self, build: Callable[[], Any], built) -> None:
        try:
            self.engine = build()
        except BaseException as err:
            self._error = err
            return
        finally:
            built.set()
        try:
            while True:
                self._wake.wait()
                self._wake.clear()  # before the inbox is read: a later put sets it again
                while True:
                    if not self._take_inbox():
                        raise RuntimeError("shut down")
                    if not self.engine.has_unfinished_requests():
                        break
                    for out in self.engine.step():
                        if out.finished and out.request_id in self._waiting:
                            _resolve(*self._waiting.pop(out.request_id), result=out)
        except BaseException as err:  # stopped, or the engine is unusable: every caller gets the error
            self._error = err
            self._fail_all(err)

    def _fail_all(self, err: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for loop, fut in waiting.values():
            _resolve(loop, fut, error=err)
        while not self._inbox.empty():
            item = self._inbox.get()
            if item[0] in ("add", "call"):
                _resolve(*item[-2:], error=err)

    def _take_inbox(self) -> bool:
        """Adds new requests, drops aborted ones, runs calls; False once asked to stop."""
        while not self._inbox.empty():
            item = self._inbox.get()
            kind = item[0]
            if kind == "stop":
                return False
            if kind == "add":
                _, rid, prompt, params, lora, loop, fut = item
                try:
                    self.engine.add_request(rid, prompt, params, lora_request=lora)
                except Exception as err:  # this request is bad (vLLM validates it here), not the engine
                    _resolve(loop, fut, error=err)
                    continue
                self._waiting[rid] = (loop, fut)
            elif kind == "abort":
                if self._waiting.pop(item[1], None) is not None:
                    self.engine.abort_request([item[1]])
            else:  # "call": between steps, so no step sees half-loaded weights
                _, fn, loop, fut = item
                try:
                    _resolve(loop, fut, result=fn(self.engine))
                except Exception as err:
                    _resolve(loop, fut, error=err)
        return True


def _resolve(loop, fut, result=None, error: Optional[BaseException] = None) -> None:
    """Completes an asyncio future from another thread (unless its caller gave up on it)."""

    def done() -> None:
        if not fut.done():
            fut.set_exception(error) if error is not None else fut.set_result(result)

    try:
        loop.call_soon_threadsafe(done)
    except RuntimeError:  # the caller's loop is closed
        pass


# -- long-lived engines -------------------------------------------------------------------------
# One engine per model per process, started once and reused by every generation step (synthesis's
# topics / questions / responses, refinement's rounds, evaluation of the same model): on the CPU
# default an engine start costs ~45 s, more than most steps generate for.


class EngineActor:
    """A Ray actor around one vLLM engine (:func:`batch_llm`): concurrent ``generate`` calls (one per Ray Data batch)
    share the engine's continuous batching, so several batches in flight keep it full.

    Every call names the model it wants (``model_path``): a running engine switches to another
    model of the same architecture and tokenizer by loading its weights in place
    (:func:`weights_swappable`; about 1.5 s for the default model instead of a 30-45 s engine start),
    as RL frameworks push new weights into a live engine.
    When its process or node dies, Ray restarts it elsewhere (``engine.max_restarts``) and retries the
    calls in flight: the restarted actor has no engine yet, so the first call starts one with the
    model that call names, not the one the actor was first created with.
    """

    def __init__(self, model_path: Optional[str], model: ModelConfig, engine: EngineConfig):
        """``model_path`` None: created before the model was resolved (:func:`create_engine_actors`);
        the first :meth:`use` names it."""
        import asyncio

        self.path, self.model, self.engine = model_path, model, engine
        self.llm = None
        self._loading = asyncio.Lock()  # one start or weight load at a time (concurrent calls wait)

    def prepare(self) -> float:
        """Imports vLLM's engine (about 5 s on 2 cores) before any model is named; returns the seconds.
        An actor created while the driver still resolves the model (materialising the embedded one)
        then starts its engine sooner. Only imports: the engine is built in its own thread by use()."""
        import time

        t0 = time.perf_counter()
        import vllm.engine.arg_utils  # noqa: F401
        import vllm.v1.engine.llm_engine  # noqa: F401

        return time.perf_counter() - t0

    async def use(self, model_path: Optional[str] = None) -> tuple[str, float]:
        """Makes the engine serve ``model_path`` (default: the current one): starts it if there is none,
        loads the weights in place if it serves another model. Returns ("start" | "swap" | "", seconds).
        A swap only happens between passes (the caller's pipeline has no request in flight)."""
        import time

        path = model_path or self.path
        if path is None:
            raise ValueError("no model named yet: an engine actor created early starts when a call names its model")
        async with self._loading:
            if self.llm is not None and path == self.path:
                return "", 0.0
            t0 = time.perf_counter()
            if self.llm is None:
                self.path = path
                self.llm = batch_llm(path, self.model, self.engine)
                # one token through the engine, so the first real batch does not pay for lazy set-up
                await direct_async_generate(self.llm, [1, 2, 3], {"max_tokens": 1, "temperature": 0.0}, "warmup")
                return "start", time.perf_counter() - t0
            await self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
            await self.llm.reset_prefix_cache()  # cached KV blocks belong to the old weights
            self.path = path
            return "swap", time.perf_counter() - t0

    async def generate(
        self, prompt_ids: list[list[int]], params: list[dict], model_path: Optional[str] = None
    ) -> list[tuple[str, int]]:
        import asyncio
        import uuid

        await self.use(model_path)  # started after a restart by Ray; the model this call names
        tag = uuid.uuid4().hex
        jobs = [
            direct_async_generate(self.llm, ids, p, f"{tag}-{i}") for i, (ids, p) in enumerate(zip(prompt_ids, params))
        ]
        return list(await asyncio.gather(*jobs))

    async def generate_chats(
        self, chats: list[tuple[list[dict], str]], params: list[dict], model_path: Optional[str] = None
    ) -> list[tuple]:
        """Renders each (chat messages, response prefix) with the one chat template and generates;
        returns (text, generated tokens, prompt tokens, prompt_too_long) per chat. A prompt that
        leaves no room to generate is not sent (vLLM would fail the whole batch) and comes back
        empty; max_tokens is capped at the context left after the prompt."""
        from ptalign_ray.chat_template import load_tokenizer, render_ids

        await self.use(model_path)
        model = self.model
        tok = load_tokenizer(self.path, model.trust_remote_code)
        ids = [render_ids(tok, messages, response_prefix=prefix) for messages, prefix in chats]
        room = [model.max_model_len - len(p) for p in ids]
        todo = [i for i, r in enumerate(room) if r > 1]
        capped = [{**params[i], "max_tokens": max(1, min(int(params[i]["max_tokens"]), room[i]))} for i in todo]
        got: list[tuple[str, int]] = [("", 0)] * len(ids)
        for i, res in zip(todo, await self.generate([ids[i] for i in todo], capped, self.path)):
            got[i] = res
        return [(text, n, len(p), r <= 1) for (text, n), p, r in zip(got, ids, room)]

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None


# config.json keys that name where a checkpoint came from, not what it computes
_PROVENANCE_KEYS = ("_name_or_path", "transformers_version")
# files besides the weights that must match for an engine to serve another checkpoint unchanged:
# vLLM reads the tokenizer and default sampling (generation_config) once, at engine start
_ENGINE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                 "tokenizer.model", "chat_template.jinja", "generation_config.json")  # fmt: skip


def weights_swappable(running: str, other: str) -> bool:
    """Whether an engine started on the checkpoint folder ``running`` serves ``other`` exactly as a
    fresh engine would after loading its weights in place: same config.json (architecture, shapes,
    dtype) and the same tokenizer, chat template and generation defaults. A merged LoRA model and
    its base are; anything that is not a local folder (a hub id) is not."""
    import json
    from pathlib import Path

    a, b = Path(running), Path(other)
    try:
        configs = [json.loads((d / "config.json").read_text()) for d in (a, b)]
    except (OSError, ValueError):
        return False
    ours, theirs = ({k: v for k, v in c.items() if k not in _PROVENANCE_KEYS} for c in configs)
    if ours != theirs:
        return False
    for name in _ENGINE_FILES:
        fa, fb = a / name, b / name
        if fa.is_file() != fb.is_file() or (fa.is_file() and fa.read_bytes() != fb.read_bytes()):
            return False
    return True


def engine_actor_options(engine: EngineConfig) -> dict[str, Any]:
    """Resources of one engine actor: its CPU bundle on the CPU default, all its GPUs otherwise
    (tensor/pipeline parallel within one node through vLLM's own multiprocessing executor)."""
    env = {"env_vars": engine_env(engine)}
    # a lost node or process: Ray restarts the actor where there is room and retries its calls
    common = {"runtime_env": env, "max_concurrency": 1000, "max_restarts": engine.max_restarts,
              "max_task_retries": engine.max_restarts}  # fmt: skip
    if engine.device == "cpu":
        return {"num_cpus": engine.cpus_per_engine * engine.workers, **common}
    opts: dict[str, Any] = {"num_cpus": 1, "num_gpus": engine.workers, **common}
    if engine.accelerator_type:
        opts["accelerator_type"] = engine.accelerator_type
    return opts


def create_engine_actors(model: ModelConfig, engine: EngineConfig, model_path: Optional[str] = None) -> list:
    """``engine.concurrency`` engine actors (the maximum of a [min, max] range), no engine started yet."""
    import ray

    count = engine.concurrency if isinstance(engine.concurrency, int) else max(engine.concurrency)
    cls = ray.remote(EngineActor)
    return [cls.options(**engine_actor_options(engine)).remote(model_path, model, engine) for _ in range(count)]


def start_engine_actors(
    model_path: str,
    model: ModelConfig,
    engine: EngineConfig,
    while_starting: Optional[Callable[[], None]] = None,
    actors: Optional[list] = None,
) -> tuple[list, float]:
    """Engine actors of one model (:func:`create_engine_actors`, or ``actors`` created earlier with the
    same config), their engines started in parallel. Returns (actor handles, seconds until all were ready).

    ``while_starting``: the caller's own set-up, run while the engines start (an engine start is
    mostly a Python process importing vLLM, so a core is left free)."""
    import time

    import ray

    t0 = time.perf_counter()
    actors = actors or create_engine_actors(model, engine, model_path)
    started = [a.use.remote(model_path) for a in actors]
    if while_starting is not None:
        while_starting()
    ray.get(started)
    return actors, time.perf_counter() - t0


def swap_engine_weights(actors: list, model_path: str) -> float:
    """Loads another model's weights into running engine actors (see :func:`weights_swappable`);
    returns the seconds until all serve it."""
    import time

    import ray

    t0 = time.perf_counter()
    ray.get([a.use.remote(model_path) for a in actors])
    return time.perf_counter() - t0


def stop_engine_actors(actors: list) -> None:
    import ray

    for actor in actors:
        try:
            ray.get(actor.shutdown.remote(), timeout=60)
        except Exception:  # noqa: BLE001 - a dead actor is already stopped
            pass
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - a Ray already shut down (a test's teardown) has nothing to kill
            pass


# -- CPU sampling without a whole-vocabulary pass per step ---------------------------------------
# On vLLM-CPU 0.32 a top-p < 1 sorts every sequence's 49k logits at every step (~220 ms per step for
# 128 sequences on 2 cores), and a repetition penalty builds two dense (sequences x vocabulary)
# count tensors: with synthesis's sampling (top_p 0.95, repetition_penalty 1.1) the engine ran at
# 0.37x its greedy token rate. These replacements give the same logits and touch only what they need
# (the top candidates; the tokens seen). vLLM loads them in its engine processes as a general plugin
# (pyproject.toml entry point) when `engine_env` sets CPU_SAMPLER_ENV.

CPU_SAMPLER_ENV = "PTALIGN_CPU_SAMPLER"
_NUCLEUS_CANDIDATES = (256, 4096)  # top-k sizes tried before the whole-vocabulary sort


def nucleus_from_candidates(logits, k, p, whole_vocab):
    """vLLM's top-k/top-p masking for the top-p-only case, from ``torch.topk`` candidates.

    A token is kept when the probability mass ranked strictly above it is < p (vLLM's rule). Rows
    whose candidates hold less than p of the mass (the nucleus is larger) and any call with a top-k
    go to ``whole_vocab`` (vLLM's own function). Same result; rows with p >= 1 are left as they are.
    """
    import torch

    if p is None or k is not None:
        return whole_vocab(logits, k, p)
    todo = torch.nonzero(p < 1).squeeze(1)
    for size in _NUCLEUS_CANDIDATES:
        if todo.numel() == 0 or size >= logits.shape[1]:
            break
        rows = logits[todo]
        top, idx = rows.topk(size, dim=-1)
        probs = (top.float() - torch.logsumexp(rows.float(), dim=-1, keepdim=True)).exp()
        above = probs.cumsum(dim=-1) - probs
        row_p = p[todo].to(probs.dtype).unsqueeze(1)
        inside = probs.sum(dim=-1) >= row_p.squeeze(1)  # the nucleus lies within the candidates
        if inside.any():
            kept = top.masked_fill(above >= row_p, float("-inf"))[inside]
            masked = torch.full_like(rows[inside], float("-inf")).scatter_(1, idx[inside], kept)
            logits[todo[inside]] = masked
        todo = todo[~inside]
    if todo.numel():
        logits[todo] = whole_vocab(logits[todo], None, p[todo])
    return logits


def repetition_on_seen_tokens(logits, prompt_token_ids, presence, frequency, repetition, output_token_ids, dense):
    """vLLM's penalties when only a repetition penalty is set, applied to the tokens each sequence has
    seen (prompt and output) instead of through dense vocabulary-sized masks; presence/frequency
    penalties go to ``dense`` (vLLM's own function)."""
    import torch

    vocab = logits.shape[1]
    if bool((presence != 0).any()) or bool((frequency != 0).any()) or bool((prompt_token_ids[:, 0] >= vocab).any()):
        return dense(logits, prompt_token_ids, presence, frequency, repetition, output_token_ids)
    longest = max((len(t) for t in output_token_ids), default=0)
    out = torch.full((len(output_token_ids), longest), vocab, dtype=torch.long)
    for i, toks in enumerate(output_token_ids):
        out[i, : len(toks)] = torch.tensor(toks, dtype=torch.long)
    seen = torch.cat([prompt_token_ids.to(torch.long).cpu(), out], dim=1).to(logits.device)
    # padding (vocab, or -1 for async placeholders) points at the row's first prompt token: a repeat
    seen = torch.where((seen >= vocab) | (seen < 0), seen[:, :1], seen)
    vals = logits.gather(1, seen)
    r = repetition.to(logits.dtype).unsqueeze(1)
    scaled = vals * torch.where(vals > 0, 1.0 / r, r)
    return logits.scatter_(1, seen, scaled)


def register_cpu_sampler() -> None:
    """vLLM general plugin: installs the two functions above in a vLLM-CPU process when the engine's
    environment asks for it (``engine_env``); anything else (a GPU, another program) is left alone."""
    if os.environ.get(CPU_SAMPLER_ENV) != "1":
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm.v1.sample.ops.topk_topp_sampler as top_k_top_p
    import vllm.v1.sample.sampler as sampler

    if getattr(top_k_top_p.apply_top_k_top_p, "ptalign", False):
        return
    whole_vocab, dense = top_k_top_p.apply_top_k_top_p, sampler.apply_all_penalties

    def apply_top_k_top_p(logits, k, p):
        return nucleus_from_candidates(logits, k, p, whole_vocab)

    def apply_all_penalties(logits, prompt_token_ids, presence, frequency, repetition, output_token_ids):
        return repetition_on_seen_tokens(logits, prompt_token_ids, presence, frequency, repetition,
                                         output_token_ids, dense)  # fmt: skip

    apply_top_k_top_p.ptalign = True
    top_k_top_p.apply_top_k_top_p = apply_top_k_top_p
    sampler.apply_all_penalties = apply_all_penalties
