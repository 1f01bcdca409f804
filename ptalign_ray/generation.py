"""One generation pass over a Ray Dataset: rows -> chat messages -> vLLM -> rows with text.

Shared by synthesis, refinement and evaluation so that every stage renders prompts the same way
and records the same generation statistics. Ray Data renders the prompts and streams batches of
``engine.batch_size`` rows to long-lived engine actors (:mod:`ptalign_ray.engine`): one engine per
model per process, started on first use and reused by every later pass over the same model, so a
step pays for generation, not for an engine start.
"""

from __future__ import annotations

from typing import Callable, Optional

from ptalign_ray.chat_template import load_tokenizer, render_ids
from ptalign_ray.config import EngineConfig, ModelConfig
from ptalign_ray.engine import sampling_params, start_engine_actors, stop_engine_actors

# model path -> (engine config, actor handles); one model's engines at a time (bounded memory)
_ENGINES: dict[str, tuple[EngineConfig, list]] = {}
# engine starts of this process: (model path, seconds), read into stage time budgets
ENGINE_STARTS: list[tuple[str, float]] = []


def engines_for(model_path: str, engine: EngineConfig, model: ModelConfig) -> list:
    """The running engine actors of this model, started (and other models' stopped) when needed."""
    held = _ENGINES.get(model_path)
    if held is not None and held[0] == engine:
        return held[1]
    release_engines()
    actors, seconds = start_engine_actors(model_path, model, engine)
    _ENGINES[model_path] = (engine, actors)
    ENGINE_STARTS.append((model_path, round(seconds, 2)))
    return actors


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
):
    """Returns ``ds`` with the columns ``keep`` plus generated_text / token counts per row
    (and prompt_too_long: rows whose prompt did not fit the context get empty text).

    ``messages_of(row)`` builds the chat messages and ``sampling_of(row)`` the vLLM sampling
    parameters of a row; ``prefix_of(row)``, when given, the text the answer starts from (it is
    part of generated_text). All run inside Ray workers, so they must be picklable.
    """
    import ray
    import ray.data

    trust = model.trust_remote_code
    max_len = model.max_model_len

    def answer(batch):
        """Renders a batch (one chat template for every stage) and sends it to one engine actor;
        prompts that leave no room to generate never reach the engine (vLLM would fail the whole
        batch): they come back with empty text and prompt_too_long=True for the caller to count."""
        tok = load_tokenizer(model_path, trust)
        rows = batch.to_dict("records")
        prefixes = [prefix_of(r) if prefix_of else "" for r in rows]
        ids = [render_ids(tok, messages_of(r), response_prefix=pre) for r, pre in zip(rows, prefixes)]
        fits = [len(p) < max_len - 1 for p in ids]
        todo = [i for i, ok in enumerate(fits) if ok]
        params = []
        for i in todo:
            p = sampling_params(sampling_of(rows[i]))
            p["max_tokens"] = max(1, min(int(p["max_tokens"]), max_len - len(ids[i])))  # never past the context
            params.append(p)
        got: list = [("", 0)] * len(rows)
        if todo:
            # the engine is chosen by the batch's first prompt: batches spread over the actors
            actor = actors[hash(tuple(ids[todo[0]][-8:])) % len(actors)]
            for i, res in zip(todo, ray.get(actor.generate.remote([ids[i] for i in todo], params))):
                got[i] = res
        out = batch[list(keep)].copy()
        out["generated_text"] = [pre + text if ok else "" for pre, (text, _), ok in zip(prefixes, got, fits)]
        out["num_generated_tokens"] = [int(n) for _, n in got]
        out["num_input_tokens"] = [len(p) for p in ids]
        out["prompt_too_long"] = [not ok for ok in fits]
        return out

    actors = engines_for(model_path, engine, model)
    # One Ray Data operator: tasks render and wait on the engines (no CPU of their own; a few
    # batches in flight per engine keep its continuous batching full).
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
