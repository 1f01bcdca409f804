"""The evaluation stage: base vs MLE-only vs PT-ALIGN on external prompt sets, judged, reported.

1. select the prompts of every configured set (seeded sample per set) and drop those that overlap
   the seeds or the synthesised / refined training questions (:mod:`.overlap`);
2. one generation pass per model over ALL selected prompts together (one vLLM engine start per
   model, Ray Data + the model's vLLM engine, the same sampling for every model): every prompt greedy, plus a
   seeded subset answered k times with sampled decoding, as rows of the same dataset
   (:mod:`.sampled`); checkpointed per model so an interrupted stage resumes without regenerating
   finished models;
3. every configured evaluation judge (:mod:`.judges`: independent ones plus the refinement judge
   for reference) rates every answer; each judge's agreement with human labels it was never fitted
   on is measured, and the judges are compared with each other (:mod:`.compare`);
4. rates with bootstrap intervals and paired differences for every pair of models
   (:mod:`.metrics`) per judge, and the report (:mod:`.report`, headline judge first) are written
   atomically into ``RUN/evaluation/``.

Evaluated models: ``base`` = the policy model, ``mle_only`` = ``RUN/training_mle_only/merged``,
``dpo`` = ``RUN/training_dpo/merged``, ``ptalign`` = ``RUN/training/merged`` (merged weights: run-time
LoRA is 4.5x slower on vLLM-CPU); a listed trained model without its stage is skipped and reported.
Harmful prompts and the answers to them stay in ``data/generations.parquet``; logs and the report
carry counts, ids and categories only.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Callable, Optional

import pandas as pd

from ptalign_ray.artifacts import MODEL_LABELS, VARIANTS, trained_variants, upstream_key
from ptalign_ray.config import PipelineConfig
from ptalign_ray.evaluation.compare import disagreements, inter_judge
from ptalign_ray.evaluation.judges import build_judge
from ptalign_ray.evaluation.overlap import overlap_report
from ptalign_ray.evaluation.prompt_sets import SOURCES, select_prompts
from ptalign_ray.evaluation.sampled import generation_rows, sampled_uids
from ptalign_ray.runs import RunDir, budget_parts, checkpointed, write_json_atomic, write_parquet_atomic
from ptalign_ray.stages import Context, Stage, run_stage

STAGE = "evaluation"
TRAINED = {name: v.stage for name, v in VARIANTS.items()}
VERDICT_COLUMNS = ["refusal", "harmful", "marker_refusal", "score", "relevance"]


def _hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_models(cfg: PipelineConfig, run: RunDir, model_path: str) -> tuple[dict, dict]:
    """(models to evaluate: name -> {path, identity}, skipped: name -> reason). A comparison model whose
    ``training.<switch>`` is off (e.g. dpo by default) is left out quietly: nothing was meant to train it."""
    models, skipped = {}, {}
    wanted = set(trained_variants(cfg.training))
    for name in cfg.evaluation.models:
        if name in VARIANTS and name not in wanted and not run.is_done(TRAINED[name]):
            continue
        if name == "base":
            models[name] = {"path": model_path, "source": cfg.model.name_or_path,
                            "identity": {"base": cfg.model.model_dump(mode="json")}}  # fmt: skip
            continue
        stage = TRAINED[name]
        if not run.is_done(stage):
            skipped[name] = f"no finished '{stage}' stage in the run directory"
            continue
        merged = run.stage_dir(stage) / "merged"
        if not (merged / "config.json").is_file():
            skipped[name] = (
                f"{stage}/ has no merged weights (training.merge_adapter: false?); evaluation uses merged weights"
            )
            continue
        models[name] = {"path": str(merged), "source": f"{stage}/merged",
                        "identity": {stage: upstream_key(run, stage), "model": cfg.model.model_dump(mode="json")}}  # fmt: skip
    if not models:
        raise ValueError(f"no model to evaluate: evaluation.models={cfg.evaluation.models}; skipped: {skipped}")
    return models, skipped


def training_references(cfg: PipelineConfig, run: RunDir) -> tuple[dict[str, list[str]], dict]:
    """Questions the models saw or were built from: seeds, synthesised and refined questions
    (red-team and benign)."""
    from ptalign_ray.artifacts import load_benign
    from ptalign_ray.seeds import load_seeds, seeds_hash

    seeds = load_seeds(cfg.seeds)
    refs = {"seeds": list(dict.fromkeys(seeds.all_questions()))}
    hashes = {"seeds": seeds_hash(seeds)}
    for stage in ("synthesis", "refinement"):
        if run.is_done(stage):
            df = pd.read_parquet(run.data_dir(stage), columns=["question"])
            refs[stage] = df["question"].astype(str).tolist() + load_benign(run, stage)["question"].astype(str).tolist()
            hashes[stage] = upstream_key(run, stage)
    return refs, hashes


def _generate(cfg: PipelineConfig, model_path: str, rows: pd.DataFrame, log) -> tuple[pd.DataFrame, dict]:
    """One generation pass of one model over every row (greedy and sampled; Ray Data + vLLM), in rid
    order."""
    import ray.data as ray_data

    from ptalign_ray.generation import ENGINE_LOADS, engine_load_seconds, generate, token_stats

    greedy = cfg.evaluation.sampling.to_vllm()
    sampled = cfg.evaluation.sampled.sampling()
    t0, loads = time.perf_counter(), len(ENGINE_LOADS)
    ds = ray_data.from_items(
        [{"rid": r, "sample": int(k), "prompt": p} for r, k, p in zip(rows["rid"], rows["sample"], rows["prompt"])]
    )
    gen = generate(
        ds, model_path, cfg.model, cfg.engine,
        messages_of=lambda r: [{"role": "user", "content": r["prompt"]}],
        sampling_of=lambda r: greedy if r["sample"] < 0 else sampled,
        keep=("rid",),
    ).materialize()  # fmt: skip
    stats = token_stats(gen)
    out = gen.to_pandas().set_index("rid").loc[rows["rid"]].reset_index()
    start = engine_load_seconds(loads)  # engine start or weight load; 0 when it already served this model
    seconds = time.perf_counter() - t0 - start
    stats.update(
        seconds=round(seconds, 2),
        engine_start_s=start,
        prompts_per_s=round(len(out) / seconds, 3) if seconds else None,
        generated_tokens_per_s=round(stats["generated_tokens"] / seconds, 1) if seconds else None,
        greedy_rows=int((rows["sample"] < 0).sum()),
        sampled_rows=int((rows["sample"] >= 0).sum()),
    )
    out["response"] = out["generated_text"].astype(str)
    return out[["rid", "response", "num_generated_tokens", "num_input_tokens", "prompt_too_long"]], stats


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
    """Runs (or resumes) the evaluation stage; returns its manifest. A finished stage is a no-op.

    ``judge_factory(name)``, when given, builds the evaluation judges instead of the registry (tests).
    """
    ctx = Context(cfg, run, model_path, log=log, force=force, options={"judge_factory": judge_factory})
    return run_stage(EVALUATE, ctx)


def _plan(ctx: Context) -> tuple[dict, dict, dict, dict, pd.DataFrame]:
    """What is evaluated on what: (models, skipped models, reference questions, their hashes, selected
    prompts). Cheap; worked out for the stage's hash and again when it runs."""
    models, skipped = resolve_models(ctx.cfg, ctx.run, ctx.model_path)
    refs, ref_hashes = training_references(ctx.cfg, ctx.run)
    selected = select_prompts(ctx.cfg.evaluation, ctx.cfg.seed)
    return models, skipped, refs, ref_hashes, selected


def _reads(ctx: Context) -> tuple[str, ...]:
    """The synthesised / refined questions (overlap exclusion) and every trained model it evaluates."""
    models, _ = resolve_models(ctx.cfg, ctx.run, ctx.model_path)
    questions = tuple(stage for stage in ("synthesis", "refinement") if ctx.run.is_done(stage))
    return questions + tuple(TRAINED[m] for m in models if m in TRAINED)


def _config_hash(ctx: Context, upstream: dict) -> str:
    models, skipped, _, ref_hashes, selected = _plan(ctx)
    prompt_hash = _hash(list(zip(selected["uid"], selected["prompt"], selected["kind"])))
    return _hash({"evaluation": ctx.cfg.evaluation.model_dump(mode="json"), "seed": ctx.cfg.seed, "prompts": prompt_hash,
                  "models": {m: v["identity"] for m, v in models.items()}, "skipped": sorted(skipped),
                  "references": ref_hashes})  # fmt: skip


def _run(ctx: Context) -> dict:
    """Generation per model, every judge on every answer, metrics and the report; each step checkpointed."""
    from ptalign_ray.evaluation.metrics import summarize
    from ptalign_ray.evaluation.report import write_report
    from ptalign_ray.ray_runtime import init_ray

    cfg, run, log, chash = ctx.cfg, ctx.run, ctx.log, ctx.config_hash
    judge_factory = ctx.options.get("judge_factory")
    ecfg = cfg.evaluation
    models, skipped, refs, ref_hashes, selected = _plan(ctx)
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
    sampled_ids = sampled_uids(prompts, ecfg, cfg.seed)
    rows = generation_rows(prompts, sampled_ids, ecfg.sampled.k)
    if sampled_ids:
        per = prompts[prompts["uid"].isin(sampled_ids)].groupby("set", sort=False).size().to_dict()
        log(f"[evaluation] sampled decoding: {len(sampled_ids)} prompts x k={ecfg.sampled.k} "
            f"({', '.join(f'{k} {v}' for k, v in per.items())}), temperature={ecfg.sampled.temperature}, "
            f"top_p={ecfg.sampled.top_p}, max_tokens={ecfg.sampled.max_tokens}")  # fmt: skip
    gen_cfg = {"sampling": ecfg.sampling.model_dump(mode="json"), "prompts": _hash(list(zip(prompts["uid"], prompts["prompt"]))),
               "sampled": ecfg.sampled.model_dump(mode="json"), "rows": _hash(rows["rid"].tolist()),
               "max_model_len": cfg.model.max_model_len}  # fmt: skip
    generations: dict[str, pd.DataFrame] = {}
    gen_stats: dict[str, dict] = {}
    need_ray = True
    for name, info in models.items():
        ghash = _hash({**gen_cfg, "model": info["identity"]})
        label = MODEL_LABELS.get(name, name)

        def compute(info=info, label=label):
            nonlocal need_ray
            if need_ray:
                init_ray(cfg.ray)
                need_ray = False
            log(f"[evaluation] generating with {label} ({info['source']}): {len(prompts)} prompts greedy "
                f"(max_tokens={ecfg.sampling.max_tokens}, temperature={ecfg.sampling.temperature}) + "
                f"{len(rows) - len(prompts)} sampled answers, one pass")  # fmt: skip
            return _generate(cfg, info["path"], rows, log)

        df, stats = checkpointed(work, f"generations_{name}", ghash, compute)
        generations[name], gen_stats[name] = df, stats
        how = (
            "resumed from checkpoint"
            if stats.get("resumed")
            else f"{stats['seconds']:.1f}s, {stats['prompts_per_s']} rows/s"
        )
        log(f"[evaluation] {label}: {stats['rows']} answers, {stats['generated_tokens']} tokens, "
            f"{stats['prompts_too_long']} rows too long for the context ({how})")  # fmt: skip

    # -- judging: every judge, every model, greedy and sampled rows together --------------------
    judge_box: dict = {}
    construct_s: dict = {}

    def judge(jname: str):
        if jname not in judge_box:
            t0 = time.perf_counter()
            judge_box[jname] = judge_factory(jname) if judge_factory else build_judge(jname, seeds=cfg.seeds)
            construct_s[jname] = round(time.perf_counter() - t0, 2)
        return judge_box[jname]

    meta = prompts[["uid", "set", "id", "category", "kind", "request"]]
    frames = {name: rows[["rid", "uid", "sample"]].merge(meta, on="uid", how="left").merge(generations[name], on="rid", how="left")
              .assign(evaluated=lambda d: ~d["prompt_too_long"].astype(bool)) for name in models}  # fmt: skip
    judged: dict[str, dict[str, pd.DataFrame]] = {}
    judge_stats: dict[str, dict] = {}
    judge_info: dict[str, dict] = {}
    for jname in ecfg.judges:
        judged[jname] = {}
        for name in models:
            frame = frames[name]
            jhash = _hash({"judge": jname, "seeds": ref_hashes["seeds"], "rows": frame["rid"].tolist(),
                           "generations": _hash(frame["response"].tolist()), "kind": frame["kind"].tolist()})  # fmt: skip

            def compute_judged(frame=frame, jname=jname):
                t0 = time.perf_counter()
                out = judge(jname).judge_frame(frame)
                secs = time.perf_counter() - t0
                cols = [c for c in VERDICT_COLUMNS if c in out]
                return out[["rid", *cols]], {"items": len(out), "seconds": round(secs, 2),
                                             "items_per_s": round(len(out) / secs, 1) if secs else None}  # fmt: skip

            verdicts, jstats = checkpointed(work, f"judged_{jname}_{name}", jhash, compute_judged)
            judged[jname][name] = frame.merge(verdicts, on="rid", how="left")
            judge_stats.setdefault(name, {})[jname] = jstats
        agreement, _ = checkpointed(
            work, f"judge_agreement_{jname}", _hash({"judge": jname, "seeds": ref_hashes["seeds"], "v": 2}),
            lambda jname=jname: (pd.DataFrame({"json": [json.dumps(judge(jname).agreement())]}), {}),
        )  # fmt: skip
        info_path = work / f"judge_info_{jname}.json"
        if jname in judge_box or not info_path.is_file():
            write_json_atomic(info_path, judge(jname).describe())
        judge_info[jname] = json.loads(info_path.read_text()) | {"agreement": json.loads(agreement["json"].iloc[0])}
        log(f"[evaluation] judge {jname}: " + ", ".join(
            f"{t} accuracy {a['accuracy']:.3f} (n={a['n']})" for t, a in judge_info[jname]["agreement"].items()
            if isinstance(a, dict) and a.get("n")))  # fmt: skip

    reference = "base" if "base" in models else next(iter(models))
    metrics_by_judge = {}
    for jname in ecfg.judges:
        greedy = {
            m: df[df["sample"] < 0].drop(columns=["rid", "sample"]).reset_index(drop=True)
            for m, df in judged[jname].items()
        }
        sampled = {m: df[df["sample"] >= 0].reset_index(drop=True) for m, df in judged[jname].items()}
        metrics_by_judge[jname] = summarize(greedy, ecfg.bootstrap_samples, ecfg.confidence, cfg.seed, reference=reference,
                                            sampled=sampled)  # fmt: skip
    head = ecfg.headline_judge
    metrics = metrics_by_judge[head]
    pooled = {j: pd.concat(list(d.values()), ignore_index=True) for j, d in judged.items()}
    comparison = {"inter_judge": inter_judge(pooled),
                  "disagreements": disagreements(metrics_by_judge, {j: i["agreement"] for j, i in judge_info.items()},
                                                 head, list(models))}  # fmt: skip
    too_long = generations[next(iter(models))].set_index("rid")["prompt_too_long"].astype(bool)
    too_long.index = [r.rsplit("#", 1)[0] for r in too_long.index]
    too_long = too_long[~too_long.index.duplicated()]
    sets = _set_counts(selected, excluded, too_long)
    for sname, n in prompts[prompts["uid"].isin(sampled_ids)].groupby("set", sort=False).size().items():
        sets[sname]["sampled_prompts"] = int(n)
    for sname, info in sets.items():
        log(f"[evaluation] set {sname}: {info['selected']} selected, {info['excluded_overlap']} excluded (overlap), "
            f"{info['prompt_too_long']} too long, {info['evaluated']} evaluated, "
            f"{info.get('sampled_prompts', 0)} also sampled x{ecfg.sampled.k}")  # fmt: skip

    results = {
        "stage": STAGE,
        "config_hash": chash,
        "run_dir": str(run.root),
        "models": {
            n: {
                "label": MODEL_LABELS.get(n, n),
                "source": i["source"],
                "generation": gen_stats[n],
                "judging": judge_stats[n],
            }
            for n, i in models.items()
        },  # fmt: skip
        "models_skipped": skipped,
        "reference_model": reference,
        "sampling": ecfg.sampling.model_dump(mode="json"),
        "sampled": ecfg.sampled.model_dump(mode="json") | {"prompts": len(sampled_ids)},
        "sets": sets,
        "headline_judge": head,
        "metrics": metrics,
        "metrics_by_judge": metrics_by_judge,
        "judges": judge_info,
        "judge_comparison": comparison,
        "overlap": overlap,
        "benign_refusal_examples": _benign_examples(
            {m: df[df["sample"] < 0] for m, df in judged[head].items()}, prompts
        ),
        "training": _training_info(run),
        "refinement": _refinement_info(run),
        "config": ecfg.model_dump(mode="json"),
    }
    data = []
    for name in models:
        df = frames[name].drop(columns=["request"])
        for jname in ecfg.judges:
            v = judged[jname][name].set_index("rid")
            for col in ("refusal", "harmful"):
                df[f"{jname}_{col}"] = v.loc[df["rid"], col].to_numpy()
        data.append(df.assign(model=name))
    data = pd.concat(data, ignore_index=True)
    results["wall_seconds"] = round(time.perf_counter() - t_stage, 2)
    fresh = [g for g in gen_stats.values() if not g.get("resumed")]
    engine_s = round(sum(g.get("engine_start_s", 0.0) for g in fresh), 2)
    generation_s = round(sum(g["seconds"] for g in fresh), 2)
    judging_s = round(sum(j.get("seconds", 0.0) for m in judge_stats.values() for j in m.values()
                          if isinstance(j, dict) and not j.get("resumed")) + sum(construct_s.values()), 2)  # fmt: skip
    results["time_budget"] = {"wall_s": results["wall_seconds"], "engine_start_s": engine_s, "generation_s": generation_s,
                              "judging_s": judging_s,
                              "other_s": round(results["wall_seconds"] - engine_s - generation_s - judging_s, 2)}  # fmt: skip
    write_parquet_atomic(data, ctx.out / "data" / "generations.parquet")
    files = write_report(results, ctx.out, run)
    return {
        "models": list(models),
        "models_skipped": skipped,
        "prompts": {
            "selected": len(selected),
            "excluded_overlap": overlap["excluded_total"],
            "generated_per_model": len(prompts),
            "sampled_prompts": len(sampled_ids),
            "sampled_answers_per_model": len(rows) - len(prompts),
        },  # fmt: skip
        "generation": gen_stats,
        "judging": judge_stats | {"construct_seconds": construct_s},
        "time_budget": results["time_budget"],
        "judges": {
            j: {
                t: {k: a.get(k) for k in ("n", "accuracy", "accuracy_ci")}
                for t, a in i["agreement"].items()
                if isinstance(a, dict)
            }
            for j, i in judge_info.items()
        },  # fmt: skip
        "headline_judge": head,
        "report": files,
        "headline": headline(metrics, list(models)),
        "note": "data/generations.parquet holds the models' answers, including answers to harmful prompts: "
        "a training-style artefact, keep it inside the run directory",
        "wall_seconds": round(time.perf_counter() - t_stage, 2),
        "config": cfg.model_dump(mode="json", include={"evaluation", "seed"}),
    }


def headline(metrics: dict, models: list[str]) -> dict:
    """The main numbers of every set per model, from the headline judge: greedy ASR and ASR@k for
    harmful sets, greedy and sampled (per-sample) over-refusal for benign ones."""
    out = {}
    for name, entry in metrics["sets"].items():
        key = "attack_success_rate" if "harmful" in entry["kind"] else "over_refusal_rate"
        out[name] = {"metric": key, **{m: entry["models"][m][key]["value"] for m in models}}
        if "benign" in entry["kind"] and "harmful" in entry["kind"]:
            out[name]["over_refusal_rate"] = {m: entry["models"][m]["over_refusal_rate"]["value"] for m in models}
        smp = entry.get("sampled")
        if smp:
            for key in ("asr_at_k", "refusal_per_sample"):
                if key in smp["models"][models[0]]:
                    out[name][key] = {m: smp["models"][m][key]["value"] for m in models}
            out[name]["sampled_prompts"], out[name]["k"] = smp["evaluated"], smp["k"]
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
        summary = manifest.get("metrics", {})
        # the objective's metric labels; a stage trained before objectives were recorded: its summary's keys
        objective = manifest.get("objective") or {
            "name": "dual",
            "params": {"alpha": manifest.get("alpha")},
            "metrics": {k: k for k in summary.get("first", {}) if k != "step"},
        }
        out[variant] = {"stage": stage, "alpha": manifest.get("alpha"), "steps": manifest.get("steps"),
                        "objective": objective, "history": history, "summary": summary}  # fmt: skip
    return out


def _refinement_info(run: RunDir) -> Optional[dict]:
    path = run.stage_dir("refinement") / "quality.json"
    if not run.is_done("refinement") or not path.is_file():
        return None
    q = json.loads(path.read_text())
    rounds = [{"round": r["round"], **{p: c for p, c in r["pass"].items()}} for r in q.get("rounds", [])]
    return {"rounds": rounds, "kept": q.get("kept"), "questions": q.get("questions"), "kept_rate": q.get("kept_rate")}


def print_evaluation_summary(manifest: dict, log: Callable[[str], None] = print) -> None:
    """Human-readable summary of a finished evaluation (called by the CLI); numbers only.

    Per set, from the headline judge: greedy ASR and ASR@k (harmful sets), greedy and sampled
    over-refusal (benign sets), with the prompt counts they rest on.
    """
    models = manifest["models"]
    head = manifest.get("headline_judge", "-")
    log("")
    log(f"== evaluation summary (headline judge: {head}) ==")
    for t, a in (manifest.get("judges", {}).get(head) or {}).items():
        if a.get("n"):
            ci = a.get("accuracy_ci") or [None, None]
            log(f"  judge {t:<10} : accuracy {a['accuracy']:.3f} on {a['n']} human labels"
                + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci[0] is not None else ""))  # fmt: skip
    for name, h in manifest["headline"].items():
        vals = ", ".join(f"{MODEL_LABELS.get(m, m)} {_pct(h.get(m))}" for m in models)
        what = "greedy ASR" if h["metric"] == "attack_success_rate" else "greedy over-refusal"
        log(f"  {name:<16} : {what}: {vals}")
        for key, label in (("asr_at_k", "ASR@k"), ("refusal_per_sample", "sampled over-refusal")):
            if key in h:
                vals = ", ".join(f"{MODEL_LABELS.get(m, m)} {_pct(h[key].get(m))}" for m in models)
                log(f"  {'':<16} : {label} (k={h.get('k')}, {h.get('sampled_prompts')} prompts): {vals}")
    for name, g in manifest["generation"].items():
        how = " (resumed)" if g.get("resumed") else ""
        log(f"  {MODEL_LABELS.get(name, name):<16} : {g['rows']} answers in {g['seconds']:.1f}s ({g['prompts_per_s']} rows/s, "
            f"{g['generated_tokens_per_s']} tok/s){how}")  # fmt: skip
    for name, reason in manifest.get("models_skipped", {}).items():
        log(f"  skipped          : {name} ({reason})")
    log(f"  wall time        : {manifest['wall_seconds']:.1f}s{_budget_text(manifest.get('time_budget'))}")


def _budget_text(budget: Optional[dict]) -> str:
    if not budget:
        return ""
    return f" ({budget_parts(budget, [k for k in budget if k != 'wall_s'])})"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def print_summary(manifest: dict, ctx: Context) -> None:
    """The evaluation summary and where the report is."""
    print_evaluation_summary(manifest, ctx.log)
    out = ctx.run.stage_dir(STAGE)
    ctx.log(
        f"  report           : {out / 'report.html'} ({out / 'report.md'}, {out / 'report.json'}, plots in {out / 'plots'})"
    )


EVALUATE = Stage(
    name=STAGE,
    command="evaluate",
    help="base vs MLE-only vs PT-ALIGN on HarmBench / AdvBench / jailbreaks / over-refusal; report",
    run=_run,
    summary=print_summary,
    reads=_reads,
    config_hash=_config_hash,
)
