"""What `ptalign serve` serves: engines (vLLM deployments) and the public model names routed to them.

Kept apart from Ray so it can be checked (and unit-tested) before any engine starts: a missing
training stage or a mismatched base model is an error naming the run folder and the config field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ptalign_ray.artifacts import VARIANTS
from ptalign_ray.config import EMBEDDED_MODEL, PipelineConfig
from ptalign_ray.runs import RunDir

# config name -> (training stage folder, public API name)
TRAINED = {name: (v.stage, v.api_name) for name, v in VARIANTS.items()}


class ServingPlanError(ValueError):
    """The run directory or config cannot be served as asked; the message says what to fix."""


@dataclass
class EngineSpec:
    """One vLLM engine deployment: weights plus (LoRA mode) adapters applied per request."""

    model_id: str  # Ray Serve LLM model id = vLLM served name of the weights
    weights: str
    adapters: list[tuple[str, str, int]] = field(default_factory=list)  # (API name, adapter dir, rank)


@dataclass
class ServingPlan:
    mode: str
    engines: list[EngineSpec]
    routes: dict[str, str]  # public model name -> engine model_id
    kinds: dict[str, str]  # public model name -> base | adapter | merged
    default_model: str

    def describe(self) -> list[str]:
        out = []
        for e in self.engines:
            extra = f" + adapters {[a[0] for a in e.adapters]}" if e.adapters else ""
            out.append(f"engine {e.model_id}: {e.weights}{extra}")
        return out


def base_model_name(cfg: PipelineConfig) -> str:
    """The base model's API name: serving.base_model_name, else derived from model.name_or_path."""
    if cfg.serving.base_model_name:
        return cfg.serving.base_model_name
    name = cfg.model.name_or_path
    if name == EMBEDDED_MODEL:
        return EMBEDDED_MODEL.split(":", 1)[1]
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve().name
    return name  # a hub id such as meta-llama/Llama-3.1-8B-Instruct


def _adapter_rank(adapter_dir: Path) -> int:
    try:
        return int(json.loads((adapter_dir / "adapter_config.json").read_text())["r"])
    except (OSError, KeyError, ValueError) as err:
        raise ServingPlanError(f"{adapter_dir}/adapter_config.json is not a readable peft LoRA config: {err}") from None


def _trained_stage(cfg: PipelineConfig, run: RunDir, key: str) -> Path:
    stage, public = TRAINED[key]
    folder = run.stage_dir(stage)
    switch = f" (with training.{VARIANTS[key].switch}: true)" if VARIANTS[key].switch else ""
    if not run.is_done(stage):
        raise ServingPlanError(
            f"serving.models lists {key!r} but {folder} is not a finished training stage; run `ptalign train "
            f"--run-dir {run.root}` first{switch} or remove {key!r} from serving.models"
        )
    trained_on = run.manifest(stage).get("model")
    if trained_on and trained_on != cfg.model.name_or_path:
        raise ServingPlanError(
            f"{folder} was trained on model {trained_on!r} but model.name_or_path is {cfg.model.name_or_path!r}; "
            "serve it with the config it was trained with"
        )
    return folder


def plan_serving(cfg: PipelineConfig, run_dir: str | Path, base_path: str, mode: Optional[str] = None) -> ServingPlan:
    """The engines and routes for ``serving.models`` in ``serving.mode`` (or ``mode``)."""
    mode = mode or cfg.serving.mode
    run = RunDir(run_dir)
    base = base_model_name(cfg)
    routes: dict[str, str] = {}
    kinds: dict[str, str] = {}
    engines: list[EngineSpec] = []
    if mode == "lora":
        engine = EngineSpec(model_id=base, weights=base_path)
        for key in cfg.serving.models:
            if key == "base":
                routes[base], kinds[base] = base, "base"
                continue
            adapter = _trained_stage(cfg, run, key) / "adapter"
            if not (adapter / "adapter_config.json").is_file():
                raise ServingPlanError(
                    f"{adapter} holds no LoRA adapter (trained with training.lora.enabled: false?); "
                    "use serving.mode: merged"
                )
            name = TRAINED[key][1]
            engine.adapters.append((name, str(adapter.resolve()), _adapter_rank(adapter)))
            routes[name], kinds[name] = base, "adapter"
        engines.append(engine)
    elif mode == "merged":
        for key in cfg.serving.models:
            if key == "base":
                engines.append(EngineSpec(model_id=base, weights=base_path))
                routes[base], kinds[base] = base, "base"
                continue
            merged = _trained_stage(cfg, run, key) / "merged"
            if not (merged / "config.json").is_file():
                raise ServingPlanError(
                    f"{merged} holds no merged weights (training.merge_adapter: false?); use serving.mode: lora"
                )
            name = TRAINED[key][1]
            engines.append(EngineSpec(model_id=name, weights=str(merged.resolve())))
            routes[name], kinds[name] = name, "merged"
    else:
        raise ServingPlanError(f"serving.mode must be 'merged' or 'lora', got {mode!r}")
    default = "ptalign" if "ptalign" in routes else next(iter(routes))
    return ServingPlan(mode=mode, engines=engines, routes=routes, kinds=kinds, default_model=default)
