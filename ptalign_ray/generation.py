"""One generation pass over a Ray Dataset: rows -> chat messages -> vLLM -> rows with text.

Shared by synthesis, refinement and evaluation so that every stage renders prompts the same way
and records the same generation statistics. Ray Data builds each row's chat messages and streams
batches of ``engine.batch_size`` rows to long-lived engine actors (:mod:`ptalign_ray.engine`),
which render and generate them: one engine per model per process, started on first use and reused
by every later pass over the same model, so a step pays for generation, not for an engine start.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from ptalign_ray.config import EngineConfig, ModelConfig
from ptalign_ray.engine import engine_actor_options, start_engine_actors, stop_engine_actors

# model path -> (engine config, actor handles); the models of one pass (and those started with it)
# at a time: bounded memory
_ENGINES: dict[str, tuple[EngineConfig, list]] = {}
# engine starts of this process: (model paths started together, seconds), read into stage time budgets
ENGINE_STARTS: list[tuple[tuple[str, ...], float]] = []


def engines_for(model_path: str, engine: EngineConfig, model: ModelConfig, start_with: Sequence[str] = ()) -> list:
    """The running engine actors of this model; when they must start, other models' engines are
    stopped and the engines of ``start_with`` (the models a caller generates with next) start
    together with this one, so that their start-ups overlap and the next pass finds them running."""
    held = _ENGINES.get(model_path)
    if held is not None and held[0] == engine:
        return held[1]
    release_engines()
    paths = tuple(dict.fromkeys([model_path, *start_with]))
    if len(paths) > 1 and not _room_for(len(paths), engine):
        paths = (model_path,)  # e.g. a GPU cluster sized for one model's engines: one after the other
    actors, seconds = start_engine_actors(paths, model, engine)
    for path, group in actors.items():
        _ENGINES[path] = (engine, group)
    ENGINE_STARTS.append((paths, round(seconds, 2)))
    return _ENGINES[model_path][1]


def _room_for(models: int, engine: EngineConfig) -> bool:
    """Whether the cluster has the CPUs and GPUs free for this many models' engines at once."""
    import ray

    opts = engine_actor_options(engine)
    count = engine.concurrency if isinstance(engine.concurrency, int) else max(engine.concurrency)
    free = ray.available_resources()
    need = {"CPU": opts.get("num_cpus", 0), "GPU": opts.get("num_gpus", 0)}
    return all(free.get(kind, 0) >= per * count * models for kind, per in need.items())


def release_engines() -> None:
    """Stops every engine this process started (their CPUs / GPUs and KV cache go back to Ray)."""
    while _ENGINES:
        _, (_, actors) = _ENGINES.popitem()
        stop_engine_actors(actors)


def engine_start_seconds(since: int = 0) -> float:
    """Seconds spent starting engines since ``ENGINE_STARTS[since]`` (for a step's time budget)."""
    return round(sum(s for _, s in ENGINE_STARTS[since:]), 2)


def generate(
    ds,
    model_path: str,
    model: ModelConfig,
    engine: EngineConfig,
    messages_of: Callable[[dict], list[dict]],
    sampling_of: Callable[[dict], dict],
    keep: tuple[str, ...],
    prefix_of: Optional[Callable[[dict], str]] = None,
    start_with: Sequence[str] = (),
):
    """Returns ``ds`` with the columns ``keep`` plus generated_text / token counts per row
    (and prompt_too_long: rows whose prompt did not fit the context get empty text).

    ``messages_of(row)`` builds the chat messages and ``sampling_of(row)`` the vLLM sampling
    parameters of a row; ``prefix_of(row)``, when given, the text the answer starts from (it is
    part of generated_text). All run inside Ray workers, so they must be picklable.
    ``start_with``: models whose engines start together with this one's if it must start
    (:func:`engines_for`).
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
            got = ray.get(actor.generate_chats.remote(chats, [sampling_of(r) for r in rows]))
        out = batch[list(keep)].copy()
        out["generated_text"] = [
            pre + text if not too_long else "" for pre, (text, _, _, too_long) in zip(prefixes, got)
        ]
        out["num_generated_tokens"] = [int(n) for _, n, _, _ in got]
        out["num_input_tokens"] = [int(n) for _, _, n, _ in got]
        out["prompt_too_long"] = [bool(t) for _, _, _, t in got]
        return out

    actors = engines_for(model_path, engine, model, start_with)
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
