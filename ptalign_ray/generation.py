"""One generation pass over a Ray Dataset: rows -> chat messages -> vLLM -> rows with text.

Shared by synthesis, refinement and evaluation so that every stage renders prompts the same way
and records the same generation statistics. Ray Data builds each row's chat messages and streams
batches of ``engine.batch_size`` rows to long-lived engine actors (:mod:`ptalign_ray.engine`),
which render and generate them: engines are started on first use (in actors created while the
driver materialises the embedded model, when it does) and reused by every later pass,
over the same model or, by loading its weights in place, over a model of the same architecture and
tokenizer (the trained models after their base), so a step pays for generation, not for an engine
start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ptalign_ray.config import EngineConfig, ModelConfig
from ptalign_ray.engine import (
    create_engine_actors,
    start_engine_actors,
    stop_engine_actors,
    swap_engine_weights,
    weights_swappable,
)


@dataclass
class _Pool:
    """The engine actors this process keeps: one pool at a time (bounded memory), serving ``path``."""

    engine: EngineConfig
    model: ModelConfig
    path: str
    actors: list


@dataclass(frozen=True)
class EngineLoad:
    """One engine start or in-place weight load of this process, read into stage time budgets."""

    path: str
    seconds: float
    swapped: bool  # weights loaded into a running engine (no new engine)


_POOL: Optional[_Pool] = None
_EARLY: Optional[tuple[EngineConfig, ModelConfig, list]] = None  # actors created before the model was known
ENGINE_LOADS: list[EngineLoad] = []


def engines_for(model_path: str, engine: EngineConfig, model: ModelConfig) -> list:
    """The running engine actors, serving ``model_path``. The engines already running serve it when
    they do, or take its weights in place when it has their architecture and tokenizer (the merged
    models after their base: seconds instead of an engine start); otherwise they are stopped and new
    ones start."""
    global _POOL
    pool = _POOL
    if pool is not None and pool.engine == engine and pool.model == model:
        if pool.path == model_path:
            return pool.actors
        if weights_swappable(pool.path, model_path):
            seconds = swap_engine_weights(pool.actors, model_path)
            pool.path = model_path
            ENGINE_LOADS.append(EngineLoad(model_path, round(seconds, 2), swapped=True))
            return pool.actors
    early = _take_early_actors(engine, model)
    release_engines()
    actors, seconds = start_engine_actors(model_path, model, engine, while_starting=warm_up_ray_data, actors=early)
    _POOL = _Pool(engine, model, model_path, actors)
    ENGINE_LOADS.append(EngineLoad(model_path, round(seconds, 2), swapped=False))
    return actors


def create_engines_early(engine: EngineConfig, model: ModelConfig) -> None:
    """Creates the engine actors before the model is resolved, each importing vLLM meanwhile; the
    first :func:`engines_for` with this config starts its engines in them. On a new machine the
    driver first materialises the embedded model (about 10 s), the time an actor's process start and
    vLLM import take. Nothing happens when engines are running or created already."""
    global _EARLY
    if _POOL is not None or _EARLY is not None:
        return
    actors = create_engine_actors(model, engine)
    for actor in actors:
        actor.prepare.remote()  # its failure, if any, shows again when the engine starts
    _EARLY = (engine, model, actors)


def _take_early_actors(engine: EngineConfig, model: ModelConfig) -> Optional[list]:
    """The actors of :func:`create_engines_early` if they were created with this config (else they stop)."""
    global _EARLY
    early, _EARLY = _EARLY, None
    if early is None:
        return None
    if early[0] == engine and early[1] == model:
        return early[2]
    stop_engine_actors(early[2])
    return None


def _pass_through(batch):
    return batch


_RAY_DATA_WARM = False


def warm_up_ray_data() -> None:
    """A one-row pass through the kind of operator :func:`generate` builds, once per process, while
    the engines start: the first pass of a process set up Ray Data's executor and a worker with
    this module imported, which added about 3 s to the first generation step (measured: 10 topic
    prompts took 9.3 s as the first Ray Data pass, 6.0-6.1 s after it, 5.8-6.5 s sent to the engine
    directly). Best effort: a failure here only means the first pass pays for its set-up itself."""
    global _RAY_DATA_WARM
    if _RAY_DATA_WARM:
        return
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    notices = logging.getLogger("ray.data._internal.progress")
    bars, level = ctx.enable_progress_bars, notices.level
    ctx.enable_progress_bars = False  # no progress bar for one row on a terminal,
    notices.setLevel(logging.ERROR)  # nor Ray Data's notice that bars are off
    try:
        ray.data.from_items([{"x": 0}]).map_batches(
            _pass_through, batch_format="pandas", num_cpus=0, compute=ray.data.TaskPoolStrategy(size=1)
        ).materialize()
        _RAY_DATA_WARM = True
    except Exception:  # noqa: BLE001 - an optimisation only; the real pass reports real errors
        pass
    finally:
        ctx.enable_progress_bars = bars
        notices.setLevel(level)


def release_engines() -> None:
    """Stops the engines this process started, and actors created early (their CPUs / GPUs and KV
    cache go back to Ray)."""
    global _POOL, _EARLY
    pool, _POOL = _POOL, None
    early, _EARLY = _EARLY, None
    if pool is not None:
        stop_engine_actors(pool.actors)
    if early is not None:
        stop_engine_actors(early[2])


def engine_load_seconds(since: int = 0) -> float:
    """Seconds spent starting engines or loading weights into them since ``ENGINE_LOADS[since]``
    (a step's share of its time budget's ``engine_start_s``)."""
    return round(sum(e.seconds for e in ENGINE_LOADS[since:]), 2)


def generate(
    ds,
    model_path: str,
    model: ModelConfig,
    engine: EngineConfig,
    messages_of: Callable[[dict], list[dict]],
    sampling_of: Callable[[dict], dict],
    keep: tuple[str, ...],
    prefix_of: Optional[Callable[[dict], str]] = None,
):
    """Returns ``ds`` with the columns ``keep`` plus generated_text / token counts per row
    (and prompt_too_long: rows whose prompt did not fit the context get empty text).

    ``messages_of(row)`` builds the chat messages and ``sampling_of(row)`` the vLLM sampling
    parameters of a row; ``prefix_of(row)``, when given, the text the answer starts from (it is
    part of generated_text). All run inside Ray workers, so they must be picklable.
    """
    import ray
    import ray.data

    def answer(batch):
        """Builds a batch's chat messages, response prefixes and sampling parameters and sends them to
        one engine actor, which renders them with the one chat template (the tokenizer lives there:
        these tasks stay light, a new Ray worker starts in about a second) and generates. Prompts
        that leave no room to generate come back with empty text and prompt_too_long=True."""
        rows = batch.to_dict("records")
        prefixes = [prefix_of(r) if prefix_of else "" for r in rows]
        chats = [(messages_of(r), pre) for r, pre in zip(rows, prefixes)]
        got = []
        if chats:
            # the engine is chosen by the batch's first prompt: batches spread over the actors
            actor = actors[hash(repr(chats[0])) % len(actors)]
            got = ray.get(actor.generate_chats.remote(chats, [sampling_of(r) for r in rows], model_path))
        out = batch[list(keep)].copy()
        out["generated_text"] = [
            pre + text if not too_long else "" for pre, (text, _, _, too_long) in zip(prefixes, got)
        ]
        out["num_generated_tokens"] = [int(n) for _, n, _, _ in got]
        out["num_input_tokens"] = [int(n) for _, _, n, _ in got]
        out["prompt_too_long"] = [bool(t) for _, _, _, t in got]
        return out

    actors = engines_for(model_path, engine, model)
    # One Ray Data operator: tasks build the chats and wait on the engines (no CPU of their own; a
    # few batches in flight per engine keep its continuous batching full).
    return ds.map_batches(
        answer, batch_size=engine.batch_size, batch_format="pandas", num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=4 * len(actors)),
    )  # fmt: skip


def token_stats(ds) -> dict[str, int]:
    """Row count and token totals of a generation output (a Dataset, read once, or a DataFrame)."""
    import pandas as pd

    df = ds if isinstance(ds, pd.DataFrame) else ds.to_pandas()
    return {
        "rows": len(df),
        "input_tokens": int(df["num_input_tokens"].sum()) if len(df) else 0,
        "generated_tokens": int(df["num_generated_tokens"].sum()) if len(df) else 0,
        "prompts_too_long": int(df["prompt_too_long"].sum()) if len(df) else 0,
    }
