"""The training stage: one model variant trained on Ray Train, written atomically into the run directory.

A variant (``artifacts.VARIANTS``) is the training section with the variant's overrides: ``ptalign``
trains ``training.objective`` (PT-ALIGN's dual loss by default), ``mle_only`` the dual loss with
alpha 0, ``dpo`` the DPO objective. Layout of a finished stage (``training/`` for PT-ALIGN,
``training_mle_only/`` and ``training_dpo/`` for the comparison models)::

    adapter/        peft LoRA adapter (loads into vLLM's LoRA support); absent for full fine-tuning
    merged/         merged weights + tokenizer (optional; the full model for full fine-tuning)
    metrics.jsonl   every report of the run, in order, across restarts
    manifest.json   config, data counts, final and held-out metrics (written last)

Ray Train's storage lives in ``RUN/.work/<stage>/ray_train/<stage>-<hash>``: a crashed worker is
restarted by Ray Train (FailureConfig.max_failures) from the latest checkpoint, and a crashed
``ptalign train`` that is started again finds the same folder and resumes from it too. A finished
stage with the same config is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from ptalign_ray.artifacts import VARIANTS, trained_variants, training_stage
from ptalign_ray.config import PipelineConfig, TrainingConfig
from ptalign_ray.runs import RunDir, StageConfigMismatch, budget_parts  # noqa: F401  (re-exported: callers catch it from here)
from ptalign_ray.stages import Context, Stage, run_stage

# Fields that change how a run is operated, not what it learns: a restart may change them.
_OPERATIONAL = ("report_every_steps", "checkpoint_every_steps", "max_failures", "ablation_mle_only", "ablation_dpo",
                "elastic_resize_interval_s")  # fmt: skip
FAIL_ENV = "PTALIGN_TRAIN_FAIL_AT"  # test hook "STEP:MARKER_FILE": one worker exits once at STEP
# Ray Train's controller polls its workers every 2 s by default, and a fit ends only at the poll after
# the training function returned: 1-2 s of every fit's end. A poll is one small actor call per worker
# (a poll that runs long is awaited at the next one; a worker is declared dead only after 10 min).
# Ray Train hands the variable on to its controller; a value set by the user wins.
CONTROLLER_POLL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def variant_training(cfg: PipelineConfig, variant: str) -> TrainingConfig:
    """The training section a variant trains with: the config's, with the variant's overrides."""
    training_stage(variant)  # a known variant
    return cfg.training.model_copy(update=VARIANTS[variant].training)


def training_hash(cfg: PipelineConfig, variant: str, source: str, source_hash: str) -> str:
    """Keys the stage on what determines the trained weights: model, training section, objective, data.

    Fields that only other objectives read (``Objective.config_fields``) are left out, so changing
    another objective's hyperparameter does not invalidate a finished stage.
    """
    from ptalign_ray.training.objectives import OBJECTIVES, build_objective

    tcfg = variant_training(cfg, variant)
    objective = build_objective(tcfg)
    unused = {f for o in OBJECTIVES.values() for f in o.config_fields} - set(objective.config_fields)
    training = cfg.training.model_dump(mode="json", exclude={*_OPERATIONAL, "objective", *unused})
    key = {"model": cfg.model.model_dump(mode="json"), "training": training, "variant": variant,
           "source": source, "source_hash": source_hash}  # fmt: skip
    if objective.name == "dual":
        key["alpha"] = tcfg.alpha  # as stages trained before training.objective existed were keyed
    else:
        key["objective"] = {"name": objective.name, **objective.params}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _fault_injection(work: Path) -> dict:
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return {}
    step, _, marker = spec.partition(":")
    return {"fail_at_step": int(step), "fail_marker": marker or str(work / "fault-injected")}


def merge_adapter(model_path: str, adapter_dir: Path, out_dir: Path, trust_remote_code: bool = False) -> None:
    """Base + LoRA -> plain weights with the tokenizer (fast vLLM inference on CPU)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ptalign_ray.chat_template import load_tokenizer

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto", trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    load_tokenizer(model_path, trust_remote_code).save_pretrained(out_dir)


def _summary(history: list[dict], metrics: list[str]) -> dict:
    """First / last training report and held-out metrics before / after, for the manifest.

    ``metrics``: the objective's metric names; every objective reports a "loss".
    """
    train = [h for h in history if "loss" in h]
    held = [h for h in history if "holdout_loss" in h]
    keys = tuple(metrics)
    hkeys = tuple(f"holdout_{k}" for k in keys)
    out: dict = {"reports": len(history)}
    if train:
        out["first"] = {k: train[0].get(k) for k in ("step", *keys)}
        out["final"] = {k: train[-1].get(k) for k in ("step", "epoch", *keys, "lr", "tokens_per_s", "step_time_s")}
        out["tokens"] = sum(h["tokens"] for h in train)
        out["supervised_tokens"] = sum(h["supervised_tokens"] for h in train)
    if held:
        out["holdout_before"] = {k: held[0].get(k) for k in ("step", *hkeys)}
        out["holdout_after"] = {k: held[-1].get(k) for k in ("step", *hkeys)}
    out["resumed_from_steps"] = sorted({h["resumed_from_step"] for h in history if h.get("resumed_from_step")})
    return out


def fit_keeping_ctrl_c(trainer):
    """``trainer.fit()`` with Ctrl-C still stopping the command after it. Ray Train 2.60 installs its own
    SIGINT handler in fit() (a first Ctrl-C aborts the run gracefully) and never puts the previous one
    back: a later Ctrl-C - during evaluation in `ptalign run` - reached the handler of a finished run
    and was lost; the run went on to the end (seen in test_run_pipeline). An aborted fit ends without a
    final checkpoint, which the caller refuses to publish."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()
    before = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        signal.signal(signal.SIGINT, before)


def train_stage(
    cfg: PipelineConfig,
    run: RunDir,
    model_path: str,
    variant: str = "ptalign",
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs (or resumes) one training variant; returns its manifest. A finished stage is a no-op."""
    stage = next(s for s in TRAIN if s.name == training_stage(variant))
    return run_stage(stage, Context(cfg, run, model_path, log=log, force=force))


def _source(ctx: Context) -> tuple[str, ...]:
    """What it trains on: the refined dataset when refinement has finished, else the synthesis triplets."""
    from ptalign_ray.training.data import source_stage

    return (source_stage(ctx.run),)


def _config_hash(ctx: Context, upstream: dict, variant: str) -> str:
    from ptalign_ray.training.objectives import build_objective

    tcfg = variant_training(ctx.cfg, variant)
    objective = build_objective(tcfg)
    if objective.uses_reference and not tcfg.lora.enabled:
        raise ValueError(f"[{training_stage(variant)}] objective {objective.name!r} needs training.lora.enabled (its "
                         "reference model is the base model with the adapter off)")  # fmt: skip
    [(source, source_hash)] = upstream.items()
    return training_hash(ctx.cfg, variant, source, source_hash)


def _run(ctx: Context, variant: str) -> dict:
    """Trains the variant on Ray Train (resuming from its latest checkpoint) and copies the result out."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault(*CONTROLLER_POLL)
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ptalign_ray.chat_template import load_tokenizer
    from ptalign_ray.ray_runtime import init_ray
    from ptalign_ray.training.data import prepare_training_data
    from ptalign_ray.training.objectives import build_objective
    from ptalign_ray.training.trainer import ADAPTER_DIR, FULL_MODEL_DIR, STATE_FILE, train_loop_per_worker

    cfg, run, model_path, log, chash, tmp = ctx.cfg, ctx.run, ctx.model_path, ctx.log, ctx.config_hash, ctx.out
    stage = ctx.stage
    tcfg = variant_training(cfg, variant)
    objective = build_objective(tcfg)
    [(source, source_hash)] = ctx.upstream.items()
    if tcfg.strategy == "fsdp" and not tcfg.use_gpu:
        raise ValueError("training.strategy 'fsdp' needs GPUs (training.use_gpu: true); use 'ddp' on CPU")

    init_ray(cfg.ray)
    t0 = time.perf_counter()
    from ptalign_ray.seeds import load_seeds

    openings = tuple(load_seeds(cfg.seeds).toxic_openings)
    data = prepare_training_data(run, model_path, tcfg, cfg.model.trust_remote_code, log, toxic_openings=openings)
    s = data.stats
    log(
        f"[{stage}] {s['train_pairs']} training / {s['holdout_pairs']} held-out pairs, "
        f"{s['train_benign']} / {s['holdout_benign']} benign answers; dropped: "
        f"{s['dropped_empty_ut']} empty UT mask ({tcfg.mask_mode}), {s['dropped_no_rejected']} without a rejected "
        f"answer ({objective.name}), {s['dropped_overlong']} over-long, "
        f"{s['dropped_truncated_empty']} empty after truncation; truncated: {s['truncated_positive']} positive, "
        f"{s['truncated_toxic']} toxic"
    )
    tok = load_tokenizer(model_path, cfg.model.trust_remote_code)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    work = run.work_dir(stage)
    name = f"{stage}-{chash}"
    loop_config = {
        "training": tcfg.model_dump(mode="json"),
        "model_path": model_path,
        "pad_id": int(pad_id),
        "trust_remote_code": cfg.model.trust_remote_code,
        "checkpoint_root": str(work / "ray_train" / name),  # where Ray Train writes this run's checkpoints
        **_fault_injection(work),
    }
    workers = tuple(tcfg.num_workers) if isinstance(tcfg.num_workers, (tuple, list)) else int(tcfg.num_workers)
    if isinstance(workers, tuple):
        # Ray Train sizes an elastic group from the nodes' total CPUs / GPUs, not from what is free: an
        # engine this process keeps for evaluation would hold one, and a group counted with it would
        # wait for it forever. Evaluation starts its engine again.
        from ptalign_ray.generation import release_engines

        release_engines()
    datasets = {"train": data.train}
    if data.holdout is not None:
        datasets["holdout"] = data.holdout
    log(f"[{stage}] objective={objective.name} {_params(objective.params)} mask={tcfg.mask_mode} workers={workers} "
        f"strategy={tcfg.strategy} "
        f"lora={'r=%d' % tcfg.lora.r if tcfg.lora.enabled else 'off (full fine-tuning)'}; checkpoints in {work}")  # fmt: skip
    prepare_seconds = time.perf_counter() - t0
    loop_config["fit_started"] = time.time()  # the worker measures Ray Train's start from it
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=tcfg.use_gpu, elastic_resize_monitor_interval_s=tcfg.elastic_resize_interval_s
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(work / "ray_train"),
            failure_config=FailureConfig(max_failures=tcfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets,
        # Every worker reads all rows and takes its own by index (see trainer.py): exact resume.
        dataset_config=DataConfig(datasets_to_split=[]),
    )
    result = fit_keeping_ctrl_c(trainer)
    train_seconds = time.perf_counter() - t0
    if result.checkpoint is None or not Path(result.checkpoint.path).name.startswith("final_"):
        raise RuntimeError(
            f"[{stage}] Ray Train ended before the last step (stopped with Ctrl-C?) without a final checkpoint in "
            f"{work}; run the same command again to resume from its checkpoints"
        )

    merge_seconds = 0.0
    with result.checkpoint.as_directory() as ckpt:
        ckpt = Path(ckpt)
        state = json.loads((ckpt / STATE_FILE).read_text())
        history = state["history"]
        outputs: dict[str, Optional[str]] = {"adapter": None, "merged": None, "metrics": "metrics.jsonl"}
        if tcfg.lora.enabled:
            shutil.copytree(ckpt / ADAPTER_DIR, tmp / "adapter")
            outputs["adapter"] = "adapter"
            if tcfg.merge_adapter:
                log(f"[{stage}] merging the adapter into the base weights")
                t_merge = time.perf_counter()
                merge_adapter(model_path, tmp / "adapter", tmp / "merged", cfg.model.trust_remote_code)
                merge_seconds = time.perf_counter() - t_merge
                outputs["merged"] = "merged"
        else:
            shutil.copytree(ckpt / FULL_MODEL_DIR, tmp / "merged")
            tok.save_pretrained(tmp / "merged")
            outputs["merged"] = "merged"
        with open(tmp / "metrics.jsonl", "w") as f:
            for record in history:
                f.write(json.dumps(record, sort_keys=True) + "\n")
    return {
        "variant": variant,
        "model": cfg.model.name_or_path,
        "model_path": model_path,
        "source": {"stage": source, "config_hash": source_hash, "path": str(run.data_dir(source))},
        "alpha": objective.params.get("alpha"),
        "objective": {"name": objective.name, "params": objective.params, "metrics": dict(objective.metrics)},
        "mask_mode": tcfg.mask_mode,
        "data": data.stats,
        "steps": state["step"],
        "epochs": state["epoch"],
        "samples_seen": state["samples_seen"],
        "metrics": _summary(history, list(objective.metrics)),
        "outputs": outputs,
        "ray_train": {"storage_path": str(work / "ray_train"), "name": name, "workers": workers},
        "wall_seconds": round(train_seconds, 2),
        "time_budget": _time_budget(train_seconds, prepare_seconds, state, merge_seconds),
        "config": cfg.model_dump(mode="json", include={"model", "training", "seed"}),
    }


def _time_budget(fit_s: float, prepare_s: float, state: dict, merge_s: float) -> dict:
    """Where the training's wall time went (seconds).

    ``fit_s`` is the whole training before the merge: ``prepare`` (tokenising, the Ray datasets) in
    this process, then on the worker (rank 0) ``worker_start`` (Ray Train's controller and the worker
    process starting, imports), ``setup`` (model, rows, a restore), ``holdout`` (held-out passes),
    ``steps`` (optimizer steps) and ``checkpoint`` (all but the last); ``other`` is the rest: the final
    checkpoint, Ray Train's end, and a restarted attempt's lost work.
    """
    worker = state.get("seconds", {})
    parts = {"prepare_s": prepare_s, **{f"{k}_s": v for k, v in worker.items()},
             "steps_s": _steps_seconds(state["history"])}  # fmt: skip
    return {
        "fit_s": round(fit_s, 2),
        **{k: round(v, 2) for k, v in parts.items()},
        "other_s": round(fit_s - sum(parts.values()), 2),
        "merge_s": round(merge_s, 2),
    }


_BUDGET_ORDER = ("prepare_s", "worker_start_s", "setup_s", "holdout_s", "steps_s", "checkpoint_s", "other_s")


def _budget_text(manifest: dict) -> str:
    """The summary's wall-time text, e.g. 89s (prepare 7s, worker start 5s, ...) + merge 3s; a manifest
    written before the breakdown existed has the fit, its steps and the merge only."""
    budget = manifest.get("time_budget") or {}
    parts = budget_parts(budget, _BUDGET_ORDER)
    merge = f" + merge {budget['merge_s']:.0f}s" if budget.get("merge_s") else ""
    return f"{manifest['wall_seconds']:.0f}s" + (f" ({parts})" if parts else "") + merge


def _steps_seconds(history: list[dict]) -> float:
    """Optimizer-step time from the logged windows (each: mean step time x steps in the window)."""
    total, last = 0.0, 0
    for rec in history:
        if "step_time_s" in rec:
            total += rec["step_time_s"] * (rec["step"] - last)
            last = rec["step"]
    return total


def _fmt(value, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def _params(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def print_training_summary(manifest: dict, log: Callable[[str], None] = print) -> None:
    """Human-readable summary of a finished training stage (called by the CLI)."""
    m, d, obj = manifest["metrics"], manifest["data"], manifest["objective"]
    log("")
    log(f"== {manifest['stage']} summary ({manifest['variant']}, objective {obj['name']} {_params(obj['params'])}, "
        f"mask={manifest['mask_mode']}) ==")  # fmt: skip
    log(f"  data             : {d['train_pairs']} training + {d['holdout_pairs']} held-out pairs"
        f", {d.get('train_benign', 0)} + {d.get('holdout_benign', 0)} benign answers from '{manifest['source']['stage']}'"
        f" ({d['rows']} rows; dropped {d['dropped_empty_ut']} empty-UT, {d.get('dropped_no_rejected', 0)} without a"
        f" rejected answer, {d['dropped_overlong']} over-long, {d['dropped_truncated_empty']} empty after truncation;"
        f" truncated {d['truncated_positive']}+{d['truncated_toxic']})")  # fmt: skip
    log(f"  steps            : {manifest['steps']} over {manifest['epochs']} epochs, {manifest['samples_seen']} pairs seen"
        + (f"; resumed from step(s) {m['resumed_from_steps']}" if m.get("resumed_from_steps") else ""))  # fmt: skip
    labels = obj["metrics"]
    if "first" in m:
        f, last = m["first"], m["final"]
        for k, label in labels.items():
            log(f"  {label:<17}: {_fmt(f.get(k))} -> {_fmt(last.get(k))}")
        log(
            f"  throughput       : {_fmt(last['tokens_per_s'], '.0f')} tok/s, {_fmt(last['step_time_s'], '.2f')} s/step (last window)"
        )
    if "holdout_before" in m:
        b, a = m["holdout_before"], m["holdout_after"]
        held = [
            f"{label} {_fmt(b.get('holdout_' + k))} -> {_fmt(a.get('holdout_' + k))}" for k, label in labels.items()
        ]
        log(f"  held-out         : {', '.join(held)}")
    outs = manifest["outputs"]
    log(
        f"  outputs          : adapter={outs['adapter'] or '-'} merged={outs['merged'] or '-'} metrics={outs['metrics']}"
    )
    log(f"  wall time        : {_budget_text(manifest)}")


def _variant_stage(variant: str) -> Stage:
    """The stage of one training variant: `ptalign train` runs those the config asks for."""
    return Stage(
        name=training_stage(variant),
        command="train",
        help="dual instruction tuning (MLE + token-level unlikelihood) on Ray Train",
        run=lambda ctx: _run(ctx, variant),
        summary=lambda manifest, ctx: print_training_summary(manifest, ctx.log),
        reads=_source,
        config_hash=lambda ctx, upstream: _config_hash(ctx, upstream, variant),
        wanted=lambda cfg: variant in trained_variants(cfg.training),
    )


TRAIN = tuple(_variant_stage(v) for v in VARIANTS)
