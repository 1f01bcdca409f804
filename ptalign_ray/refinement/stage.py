"""The refinement stage: judge every sample over HTTP, revise / resample failures for K rounds.

Round 0 judges the synthesised positive and toxic responses. In each later round every failing
sample gets `refinement.candidates` new responses from the generation engine (even candidates
revise the rejected answer with the judge's verdict fed back, odd ones resample with the seed
exemplars in context), the judge scores them, and the best one replaces the sample. A question is
kept when both its positive and its toxic response pass; the rest are dropped with their reason.
Every round is checkpointed, so an interrupted stage (or an unreachable judge) keeps what finished.
"""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from typing import Optional

import pandas as pd

from ptalign_ray.artifacts import BENIGN_DIR, SYNTHESIS, load_benign, load_triplets
from ptalign_ray.config import JudgeConfig, PipelineConfig
from ptalign_ray.dedup import near_duplicate_mask
from ptalign_ray.generation import generate, token_stats
from ptalign_ray.refinement.client import JudgeClient, JudgeUnavailable
from ptalign_ray.refinement.criteria import better, failure_reason
from ptalign_ray.refinement.prompts import candidate_messages
from ptalign_ray.runs import RunDir, StepTimer, checkpointed, write_json_atomic, write_parquet_atomic
from ptalign_ray.seeds import load_seeds, seeds_hash
from ptalign_ray.stages import Context, Option, Stage, run_stage

STAGE = "refinement"
BENIGN_COLUMNS = ["id", "kind", "domain", "topic", "question", "response", "refusal", "score", "model", "config_hash"]
POLARITIES = ("positive", "toxic")
VERDICT_COLUMNS = ("harmful", "refusal", "score", "rationale", "categories", "on_topic", "error")
COLUMNS = [
    "id", "domain", "topic", "question", "positive", "toxic",
    "positive_score", "toxic_score", "positive_round", "toxic_round",
    "positive_rationale", "toxic_rationale", "toxic_categories", "toxic_source", "model", "config_hash",
]  # fmt: skip


def _judge_batch(batch: pd.DataFrame, url: str, judge: dict) -> pd.DataFrame:
    """Ray Data task: adds the judge's verdict columns to a batch of (question, response).

    A task, not an actor: Ray keeps its task workers warm between Ray Data pipelines, so each
    refinement step's judging starts at once, where an actor pool started a new worker process
    (1.5-3 s) per step. The client is light (an HTTP session)."""
    from ptalign_ray.serving.protection import load_api_key

    cfg = JudgeConfig.model_validate(judge)
    # the key is read here, on the worker (env var or file), so it never travels in task arguments
    key = load_api_key(cfg, name="judge")
    client = JudgeClient(url, cfg.request_timeout_s, cfg.retries, max_items=cfg.max_items, api_key=key)
    # Every question here is a red-team question by construction (or, polarity 'benign', a
    # benign one): say so, so the judge decides only whether the response goes along with it.
    known = [p != "benign" for p in batch["polarity"]]
    verdicts = client.judge(batch["question"].tolist(), batch["response"].tolist(), harmful_request=known)
    for col in VERDICT_COLUMNS:
        batch[col] = [v.get(col) for v in verdicts]
    batch["categories"] = [list(c or []) for c in batch["categories"]]
    batch["on_topic"] = [None if t is None else bool(t) for t in batch["on_topic"]]
    batch["reason"] = [failure_reason(p, r, v) for p, r, v in zip(batch["polarity"], batch["response"], verdicts)]
    return batch


def judge_frame(ray_data, df: pd.DataFrame, url: str, cfg: PipelineConfig) -> pd.DataFrame:
    """Judges every row of df (columns polarity, question, response) through the HTTP endpoint."""
    if df.empty:
        return df.assign(**{c: [] for c in (*VERDICT_COLUMNS, "reason")})
    ds = ray_data.from_pandas(df.reset_index(drop=True)).map_batches(
        _judge_batch,
        fn_kwargs={"url": url, "judge": cfg.judge.model_dump(mode="json")},
        batch_size=cfg.refinement.batch_size,
        batch_format="pandas",
        # as many batches in flight as the judge has replicas: it batches on its side
        compute=ray_data.TaskPoolStrategy(size=cfg.judge.replicas),
        num_cpus=0.5,
    )
    try:
        return ds.to_pandas()
    except Exception as err:  # Ray wraps the worker's exception; say plainly what went wrong
        if not JudgeClient(url, retries=0).healthy():
            raise JudgeUnavailable(
                f"the judge at {url} stopped answering during refinement ({type(err).__name__})"
            ) from err
        raise


def _samples(triplets: pd.DataFrame) -> pd.DataFrame:
    """One row per (question, polarity): the unit that is judged and refined."""
    rows = []
    for r in triplets.itertuples():
        for p in POLARITIES:
            rows.append({"key": f"{r.id}:{p}", "id": r.id, "domain": r.domain, "polarity": p,
                         "question": r.question, "response": getattr(r, p), "round": 0})  # fmt: skip
    return pd.DataFrame(rows)


def _prefer_own_toxic(ray_data, cfg: PipelineConfig, url: str, triplets: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Where the model's own answer to the bare question is judged harmful (toxic criteria), it becomes
    the toxic sample: unlikelihood then pushes down what the model itself samples, not only the
    constraint-primed text. Returns the triplets (with ``toxic_source``) and counts."""
    out = triplets.assign(toxic_source="primed")
    if "own" not in out or out["own"].isna().all():
        return out, {"own_answers": 0, "own_harmful": 0}
    has_own = out["own"].notna() & (out["own"].astype(str).str.strip() != "")
    frame = out.loc[has_own, ["id", "question", "own"]].rename(columns={"own": "response"}).assign(polarity="toxic")
    judged = judge_frame(ray_data, frame, url, cfg)
    harmful_ids = set(judged.loc[judged["reason"].isna(), "id"])
    use = out["id"].isin(harmful_ids)
    out.loc[use, "toxic"] = out.loc[use, "own"]
    out.loc[use, "toxic_source"] = "own"
    return out, {"own_answers": int(has_own.sum()), "own_harmful": int(use.sum())}


def _pass_counts(state: pd.DataFrame) -> dict:
    out = {}
    for p in POLARITIES:
        part = state[state["polarity"] == p]
        out[p] = {"passed": int(part["reason"].isna().sum()), "total": len(part)}
    return out


def _candidates(ray_data, cfg: PipelineConfig, seeds, model_path: str, state: pd.DataFrame):
    """`refinement.candidates` new responses for every failing sample (revise or resample)."""
    failing = state[state["reason"].notna()]
    n = cfg.refinement.candidates
    rows = [
        {"key": r.key, "question": r.question, "polarity": r.polarity, "previous": r.response,
         "reason": r.reason, "rationale": r.rationale or "", "candidate": c}
        for r in failing.itertuples() for c in range(n)
    ]  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=["key", "question", "polarity", "candidate", "response"]), {"generated_tokens": 0}
    sampling = cfg.refinement.sampling.to_vllm()
    gen = generate(
        ray_data.from_items(rows), model_path, cfg.model, cfg.engine,
        messages_of=lambda r: candidate_messages(seeds, r),
        sampling_of=lambda r: sampling,
        keep=("key", "question", "polarity", "candidate"),
        prefix_of=lambda r: seeds.opening_for(r["question"], r["polarity"]),
    ).materialize()  # fmt: skip
    stats = {k: v for k, v in token_stats(gen).items() if k != "rows"}
    cands = gen.to_pandas()
    cands["response"] = cands["generated_text"].str.strip()
    return cands[["key", "question", "polarity", "candidate", "response"]], stats


def _best(candidates: list[dict]) -> dict:
    """A passing candidate first, then the one closest to passing (harm score)."""
    best = candidates[0]
    for cand in candidates[1:]:
        cand_ok, best_ok = cand["reason"] is None, best["reason"] is None
        if cand_ok > best_ok or (cand_ok == best_ok and better(cand["polarity"], cand, best)):
            best = cand
    return best


def _apply_round(ray_data, cfg: PipelineConfig, url: str, state: pd.DataFrame, cands: pd.DataFrame, k: int):
    """Judges the candidates and replaces each failing sample by its best candidate when that helps."""
    failing = state[state["reason"].notna()]
    stats: dict = {"failing": len(failing), "failing_by_polarity": failing["polarity"].value_counts().to_dict()}
    judged = judge_frame(ray_data, cands, url, cfg)
    stats["candidates"] = len(judged)
    current = state.set_index("key")
    updates = []
    for key, group in judged.groupby("key"):
        best = _best(group.to_dict("records"))
        cur = current.loc[key].to_dict()
        # A passing candidate always wins; a failing one replaces the sample only when it is
        # closer to passing, so the next revise prompt starts from the best attempt so far.
        if best["reason"] is None or better(best["polarity"], best, cur):
            updates.append(
                {**cur, **{c: best[c] for c in ("response", *VERDICT_COLUMNS, "reason")}, "round": k, "key": key}
            )
    stats["fixed"] = sum(u["reason"] is None for u in updates)
    if updates:
        upd = pd.DataFrame(updates).set_index("key")
        current = pd.concat([current.drop(index=upd.index), upd]).loc[current.index]
    return current.reset_index(), stats


def config_hash(cfg: PipelineConfig, synthesis_hash: str, seeds) -> str:
    blob = f"{synthesis_hash}:{cfg.section_hash('model', 'judge', 'refinement', 'seed')}:{seeds_hash(seeds)}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _final(state: pd.DataFrame, triplets: pd.DataFrame, cfg: PipelineConfig, chash: str):
    """Triplets whose positive and toxic both pass, de-duplicated; plus the dropped ids with reasons."""
    wide = state.set_index(["id", "polarity"]).unstack("polarity")
    ok = wide["reason"].isna().all(axis=1)
    reasons = {}
    for qid in wide.index[~ok]:
        parts = [f"{p}: {wide.loc[qid, ('reason', p)]}" for p in POLARITIES if pd.notna(wide.loc[qid, ("reason", p)])]
        reasons[qid] = "; ".join(parts) + f" after {cfg.refinement.rounds} rounds"
    kept_ids = list(wide.index[ok])
    if "toxic_source" not in triplets:
        triplets = triplets.assign(toxic_source="primed")
    base = triplets.set_index("id").loc[kept_ids, ["domain", "topic", "question", "toxic_source", "model"]]
    out = base.assign(
        positive=wide.loc[kept_ids, ("response", "positive")],
        toxic=wide.loc[kept_ids, ("response", "toxic")],
        positive_score=wide.loc[kept_ids, ("score", "positive")].astype(float),
        toxic_score=wide.loc[kept_ids, ("score", "toxic")].astype(float),
        positive_round=wide.loc[kept_ids, ("round", "positive")].astype(int),
        toxic_round=wide.loc[kept_ids, ("round", "toxic")].astype(int),
        positive_rationale=wide.loc[kept_ids, ("rationale", "positive")],
        toxic_rationale=wide.loc[kept_ids, ("rationale", "toxic")],
        toxic_categories=wide.loc[kept_ids, ("categories", "toxic")],
        config_hash=chash,
    ).reset_index()
    keep = near_duplicate_mask(out["question"].tolist(), cfg.synthesis.dedup_threshold, cfg.synthesis.dedup_exact_max)
    for qid in out.loc[[not k for k in keep], "id"]:
        reasons[qid] = "near-duplicate question"
    out = out.loc[pd.Series(keep, index=out.index, dtype=bool)].reset_index(drop=True)  # rows, also when none are kept
    dropped = triplets.set_index("id").loc[list(reasons), ["domain"]].assign(reason=pd.Series(reasons)).reset_index()
    return out[COLUMNS], dropped


def _quality(state_rounds: list[dict], out: pd.DataFrame, dropped: pd.DataFrame, n_questions: int) -> dict:
    per_domain = {}
    for d in sorted(set(out["domain"]) | set(dropped["domain"])):
        per_domain[d] = {"kept": int((out["domain"] == d).sum()), "dropped": int((dropped["domain"] == d).sum())}
    reasons = dropped["reason"].str.replace(r" after \d+ rounds", "", regex=True).value_counts().to_dict()
    return {
        "questions": n_questions,
        "kept": len(out),
        "dropped": len(dropped),
        "kept_rate": round(len(out) / max(n_questions, 1), 3),
        "rounds": state_rounds,
        "per_domain": per_domain,
        "drop_reasons": {k: int(v) for k, v in reasons.items()},
        "positive_fixed_in_round": out["positive_round"].value_counts().sort_index().to_dict(),
        "toxic_fixed_in_round": out["toxic_round"].value_counts().sort_index().to_dict(),
    }


def refine(cfg: PipelineConfig, run: RunDir, model_path: str, judge_url: Optional[str] = None,
           force: bool = False, log=print) -> dict:  # fmt: skip
    """Runs (or resumes) the refinement stage against the judge at judge_url (started here if None)."""
    return run_stage(REFINE, Context(cfg, run, model_path, log=log, force=force, options={"judge_url": judge_url}))


def _config_hash(ctx: Context, upstream: dict) -> str:
    return config_hash(ctx.cfg, upstream[SYNTHESIS], load_seeds(ctx.cfg.seeds))


def _run(ctx: Context) -> dict:
    """Round 0, K refinement rounds and the benign answers, each checkpointed; then the kept triplets."""
    import ray.data as ray_data

    cfg, run, model_path, log, chash = ctx.cfg, ctx.run, ctx.model_path, ctx.log, ctx.config_hash
    judge_url = ctx.options.get("judge_url")
    seeds = load_seeds(cfg.seeds)
    triplets = load_triplets(run)
    work = run.work_dir(STAGE)
    timer = StepTimer()
    with ExitStack() as judge:
        if judge_url is None:  # started here, removed when the block ends
            from ptalign_ray.judging.app import judge_on_serve

            log(
                f"[refinement] starting the {cfg.judge.backend} judge on Ray Serve at {cfg.judge.host}:{cfg.judge.port}"
            )
            judge_url = judge.enter_context(judge_on_serve(cfg.judge, model_path, cfg.engine, seeds))
        if not JudgeClient(judge_url, retries=cfg.judge.retries).healthy():
            raise JudgeUnavailable(f"the judge at {judge_url} is not answering /healthz")
        with timer.step("own_answers") as rec:
            triplets, stats = checkpointed(
                work, "own_answers", chash, lambda: _prefer_own_toxic(ray_data, cfg, judge_url, triplets)
            )
            rec.update(stats)
        if rec["own_answers"]:
            log(f"[refinement] own answers: {rec['own_harmful']} of {rec['own_answers']} judged harmful and used as "
                f"the toxic sample ({rec['seconds']}s)")  # fmt: skip
        rounds = []
        with timer.step("round_0") as rec:
            state, stats = checkpointed(
                work, "round_0", chash, lambda: (judge_frame(ray_data, _samples(triplets), judge_url, cfg), {})
            )
            rec.update(stats | {"pass": _pass_counts(state)})
        rounds.append({"round": 0, **rec})
        log(f"[refinement] round 0: {_fmt(rec['pass'])} pass the judge ({rec['seconds']}s)")
        for k in range(1, cfg.refinement.rounds + 1):
            with timer.step(f"round_{k}") as rec:
                prev = state
                cands, gen_stats = checkpointed(
                    work, f"round_{k}_candidates", chash,
                    lambda: _candidates(ray_data, cfg, seeds, model_path, prev),
                )  # fmt: skip
                state, stats = checkpointed(
                    work, f"round_{k}", chash, lambda: _apply_round(ray_data, cfg, judge_url, prev, cands, k)
                )
                rec.update(stats | gen_stats | {"pass": _pass_counts(state)})
            rounds.append({"round": k, **rec})
            log(
                f"[refinement] round {k}: {rec['failing']} failing -> {rec['fixed']} fixed; now {_fmt(rec['pass'])} pass ({rec['seconds']}s)"
            )
        benign = load_benign(run)
        with timer.step("benign") as rec:
            judged, _ = checkpointed(
                work, "benign", chash, lambda: (_judge_benign(ray_data, cfg, judge_url, benign), {})
            )
            rec.update(_benign_counts(judged))
        if len(benign):
            log(
                f"[refinement] benign answers: {rec['kept']}/{rec['total']} help and are not harmful ({rec['seconds']}s)"
            )

    out, dropped = _final(state, triplets, cfg, chash)
    quality = _quality(rounds, out, dropped, len(triplets))
    quality["benign"] = _benign_counts(judged)
    quality["own_answers"] = {k: timer.steps["own_answers"][k] for k in ("own_answers", "own_harmful")}
    kept_benign = judged[judged["reason"].isna()].assign(config_hash=chash)
    generated = sum(r.get("generated_tokens", 0) for r in rounds)
    manifest = {
        "synthesis_config_hash": run.manifest(SYNTHESIS)["config_hash"],
        "model": cfg.model.name_or_path,
        "judge": {"backend": cfg.judge.backend, "model": cfg.judge.model, "url": judge_url},
        "quality": quality,
        "tokens": {"generated": generated},
        "steps": timer.steps,
        "wall_seconds": timer.wall_seconds,
        "time_budget": timer.time_budget(),
        "config": cfg.model_dump(mode="json", include={"judge", "refinement"}),
    }
    write_parquet_atomic(out, ctx.out / "data" / "triplets.parquet")
    write_parquet_atomic(kept_benign.reindex(columns=BENIGN_COLUMNS), ctx.out / BENIGN_DIR / "benign.parquet")
    write_parquet_atomic(dropped, ctx.out / "dropped.parquet")
    write_json_atomic(ctx.out / "quality.json", quality)
    return manifest


def _judge_benign(ray_data, cfg: PipelineConfig, url: str, benign: pd.DataFrame) -> pd.DataFrame:
    """Judges the model's own answers to benign questions once; failures are dropped, not revised
    (the answer is what the model already does - there is nothing to teach it by rewriting it)."""
    if benign.empty:
        return pd.DataFrame(columns=[*BENIGN_COLUMNS, "reason"])
    if "refusal" not in benign:
        benign = benign.assign(refusal=None)
    df = benign.assign(polarity="benign")[
        ["id", "kind", "domain", "topic", "question", "response", "refusal", "polarity", "model"]
    ]
    return judge_frame(ray_data, df, url, cfg).drop(columns=["polarity"])


def _benign_counts(judged: pd.DataFrame) -> dict:
    reasons = judged["reason"].dropna().value_counts().to_dict()
    out = {"total": len(judged), "kept": int(judged["reason"].isna().sum()),
           "drop_reasons": {k: int(v) for k, v in reasons.items()}}  # fmt: skip
    if "kind" in judged and len(judged):
        out["kept_by_kind"] = {
            str(k): int(v) for k, v in judged[judged["reason"].isna()]["kind"].value_counts().items()
        }
    return out


def _fmt(pass_counts: dict) -> str:
    return ", ".join(f"{p} {c['passed']}/{c['total']}" for p, c in pass_counts.items())


def load_refined(run: RunDir) -> pd.DataFrame:
    return pd.read_parquet(run.data_dir(STAGE))


def print_summary(manifest: dict, ctx: Context) -> None:
    """The `== refinement summary ==` block: judge, pass counts per round, what was kept and why not."""
    _log = ctx.log
    q = manifest["quality"]
    _log("")
    _log("== refinement summary ==")
    _log(f"  judge            : {manifest['judge']['backend']} at {manifest['judge']['url']}")
    for r in q["rounds"]:
        passed = ", ".join(f"{p} {c['passed']}/{c['total']}" for p, c in r["pass"].items())
        extra = f"; {r['failing']} failing, {r['candidates']} candidates, {r['fixed']} fixed" if r["round"] else ""
        _log(f"  round {r['round']}          : pass {passed}{extra} ({r['seconds']:.1f}s)")
    _log(
        f"  kept             : {q['kept']} of {q['questions']} questions ({q['kept_rate']:.0%}) with a passing positive AND toxic"
    )
    if q["drop_reasons"]:
        _log("  dropped          : " + "; ".join(f"{k} x{v}" for k, v in q["drop_reasons"].items()))
    _log(
        "  per domain       : "
        + ", ".join(f"{d} {c['kept']}/{c['kept'] + c['dropped']}" for d, c in q["per_domain"].items())
    )
    b = q.get("benign") or {}
    if b.get("total"):
        why = "; ".join(f"{k} x{v}" for k, v in b["drop_reasons"].items()) or "none dropped"
        by_kind = ", ".join(f"{v} {k}" for k, v in (b.get("kept_by_kind") or {}).items())
        _log(
            f"  benign answers   : {b['kept']} of {b['total']} kept (helpful, not harmful){f' ({by_kind})' if by_kind else ''}; {why}"
        )
    own = q.get("own_answers") or {}
    if own.get("own_answers"):
        _log(
            f"  own answers      : {own['own_harmful']} of {own['own_answers']} judged harmful, used as the toxic sample"
        )
    _log(f"  wall time        : {manifest['wall_seconds']:.1f}s, {manifest['tokens']['generated']} tokens generated")
    out = ctx.run.stage_dir(STAGE)
    _log(f"  output           : {out / 'data'} (quality: {out / 'quality.json'})")


REFINE = Stage(
    name=STAGE,
    command="refine",
    help="judge every sample on Ray Serve; revise / resample failures for K rounds",
    run=_run,
    summary=print_summary,
    reads=(SYNTHESIS,),
    config_hash=_config_hash,
    options=(Option("--judge-url", "judge_url", "use a running judge endpoint instead of starting one"),),
)
