"""One generation pass over a Ray Dataset: rows -> chat messages -> vLLM -> rows with text.

Shared by synthesis, refinement and evaluation so that every stage renders prompts the same way
and records the same generation statistics.
"""

from __future__ import annotations

from typing import Callable, Optional

from ptalign_ray.chat_template import load_tokenizer, render_ids
from ptalign_ray.config import EngineConfig, ModelConfig
from ptalign_ray.engine import build_generation_processor, sampling_params

GEN_COLUMNS = ("generated_text", "num_generated_tokens", "num_input_tokens")


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
    trust = model.trust_remote_code
    max_len = model.max_model_len

    def render(row: dict) -> dict:
        prefix = prefix_of(row) if prefix_of else ""
        ids = render_ids(load_tokenizer(model_path, trust), messages_of(row), response_prefix=prefix)
        params = sampling_params(sampling_of(row))
        # Never ask for more tokens than the context leaves; vLLM would reject the row.
        params["max_tokens"] = max(1, min(int(params["max_tokens"]), max_len - len(ids)))
        out = {k: row[k] for k in keep}
        return {**out, "response_prefix": prefix, "tokenized_prompt": ids, "sampling_params": params}

    def postprocess(row: dict) -> dict:
        out = {k: row[k] for k in keep}
        out["generated_text"] = (row.get("response_prefix") or "") + (row.get("generated_text") or "")
        out["num_generated_tokens"] = int(row.get("num_generated_tokens") or 0)
        out["num_input_tokens"] = int(row.get("num_input_tokens") or 0)
        out["prompt_too_long"] = False
        return out

    def skipped(row: dict) -> dict:
        out = {k: row[k] for k in keep}
        out.update(generated_text="", num_generated_tokens=0, num_input_tokens=len(row["tokenized_prompt"]))
        out["prompt_too_long"] = True
        return out

    # Prompts that leave no room to generate never reach the engine (vLLM would fail the whole
    # batch); they come back with empty text and prompt_too_long=True for the caller to count.
    def fits(row: dict) -> bool:
        return len(row["tokenized_prompt"]) < max_len - 1

    rendered = ds.map(render).materialize()
    too_long = rendered.filter(lambda r: not fits(r)).map(skipped)
    processor = build_generation_processor(model_path, model, engine, lambda row: row, postprocess)
    return processor(rendered.filter(fits)).union(too_long)


def token_stats(ds) -> dict[str, int]:
    """Row count and token totals of a materialised generation output."""
    rows = ds.count()
    if rows == 0:
        return {"rows": 0, "input_tokens": 0, "generated_tokens": 0, "prompts_too_long": 0}
    return {
        "rows": rows,
        "input_tokens": int(ds.sum("num_input_tokens")),
        "generated_tokens": int(ds.sum("num_generated_tokens")),
        "prompts_too_long": int(ds.sum("prompt_too_long")),
    }
