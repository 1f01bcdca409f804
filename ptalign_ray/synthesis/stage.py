"""The synthesis stage on Ray Data: seeds -> topics -> questions -> positive / toxic responses.

With ``synthesis.benign_questions_per_topic`` the same passes also write benign questions on each
topic and the model's own answers to them (the helpful behaviour training must keep), stored apart
in ``benign/benign.parquet``.

Each step is a Ray Dataset transformation (vLLM generation on the run's long-lived engine, list parsing with
flat_map, dedup with groupby / a single-block map_batches). The output of the topic and question
steps is checkpointed in the run's work folder, so an interrupted stage resumes at the first
unfinished step; the finished stage is renamed into place atomically.
"""

from __future__ import annotations

import hashlib
import random

import pandas as pd

from ptalign_ray.artifacts import (
    BENIGN,
    BENIGN_COLUMNS,
    BENIGN_DIR,
    EVERYDAY,
    OWN,
    RED_TEAM,
    REFUSAL,
    SYNTHESIS,
    TRIPLET_COLUMNS,
    question_id,
)
from ptalign_ray.config import PipelineConfig
from ptalign_ray.dedup import near_duplicate_mask
from ptalign_ray.generation import generate, token_stats
from ptalign_ray.runs import (
    RunDir,
    StageConfigMismatch,  # noqa: F401  (re-exported: callers catch it from here)
    StepTimer,
    checkpointed,
    write_parquet_atomic,
)
from ptalign_ray.seeds import Seeds, load_seeds, seeds_hash
from ptalign_ray.stages import Context, Stage, run_stage
from ptalign_ray.synthesis.parsing import parse_questions, parse_topics
from ptalign_ray.synthesis.prompts import (
    benign_answer_messages,
    benign_question_messages,
    everyday_question_messages,
    question_messages,
    question_priming,
    response_messages,
    topic_messages,
)
from ptalign_ray.synthesis.screening import QuestionJudge, relabel, screening_counts

STAGE = SYNTHESIS
COLUMNS = TRIPLET_COLUMNS


SCREENING_FIELDS = {"screen_questions", "min_question_harm_prob", "max_benign_harm_prob"}


def generation_hash(cfg: PipelineConfig) -> str:
    """Hash of the synthesis settings that change what the model writes (all but the question judge's)."""
    data = cfg.model_dump(mode="json", include={"model", "synthesis", "seed"})
    data["synthesis"] = {k: v for k, v in data["synthesis"].items() if k not in SCREENING_FIELDS}
    return hashlib.sha256(repr(sorted(data.items())).encode()).hexdigest()[:16]


def config_hash(cfg: PipelineConfig, seeds: Seeds) -> str:
    h = hashlib.sha256(f"{cfg.section_hash('model', 'synthesis', 'seed')}:{seeds_hash(seeds)}".encode())
    return h.hexdigest()[:16]


def _dedupe_frame(
    df: pd.DataFrame, column: str, threshold: float, exact_max: int, reference: list[str] = ()
) -> pd.DataFrame:
    """Drops near-duplicate rows (and rows that near-copy a reference text, e.g. a seed question)."""
    texts = list(reference) + df[column].tolist()
    keep = near_duplicate_mask(texts, threshold, exact_max)[len(reference) :]
    return df[keep].reset_index(drop=True)


def _step_topics(ray_data, cfg: PipelineConfig, seeds: Seeds, model_path: str):
    syn = cfg.synthesis
    rows = [
        {"domain": d.name, "description": d.description, "sample": s}
        for d in seeds.domains
        for s in range(syn.topic_samples)
    ]
    n_topics = syn.topics_per_domain
    sampling = syn.topic_sampling.to_vllm()
    gen = generate(
        ray_data.from_items(rows),
        model_path, cfg.model, cfg.engine,
        messages_of=lambda r: topic_messages(r["domain"], r["description"], n_topics),
        sampling_of=lambda r: sampling,
        keep=("domain",),
    ).materialize()  # fmt: skip
    stats = token_stats(gen)

    def explode(row: dict) -> list[dict]:
        return [{"domain": row["domain"], "topic": t} for t in parse_topics(row["generated_text"])]

    threshold, exact_max, cap = syn.dedup_threshold, syn.dedup_exact_max, syn.max_topics_per_domain

    def per_domain(batch: pd.DataFrame) -> pd.DataFrame:
        """Each domain's topics deduplicated and capped, domains in sorted order."""
        groups = [
            _dedupe_frame(group.reset_index(drop=True), "topic", threshold, exact_max).head(cap)
            for _, group in batch.groupby("domain", sort=True)
        ]
        return pd.concat(groups, ignore_index=True)

    parsed = gen.flat_map(explode).materialize()
    stats["topics_parsed"] = parsed.count()
    if stats["topics_parsed"]:
        # A few topics per domain: one block and a pandas groupby. Ray Data's groupby would start
        # hash-shuffle aggregator actors for them (about 10 s on 2 cores, measured in a `ptalign run`).
        df = parsed.repartition(1).map_batches(per_domain, batch_size=None, batch_format="pandas").to_pandas()
    else:
        df = pd.DataFrame(columns=["domain", "topic"])
    stats["topics_kept"] = len(df)
    stats["domains_without_topics"] = sorted(set(d.name for d in seeds.domains) - set(df["domain"]))
    return df, stats


def _step_questions(ray_data, cfg: PipelineConfig, seeds: Seeds, model_path: str, topics: pd.DataFrame):
    syn = cfg.synthesis
    rng = random.Random(cfg.seed)
    all_seed_questions = [q.question for q in seeds.seed_questions]
    rows = []
    for n, r in enumerate(topics.itertuples()):
        own = seeds.questions_for(r.domain)
        others = [q for q in all_seed_questions if q not in own]
        pool = own + rng.sample(others, k=len(others))
        examples = pool[: syn.few_shot_questions]
        # the primed first item rotates over the examples, so topics of one domain start differently
        primed = question_priming(examples[n % len(examples) :][:1]) if syn.question_priming and examples else ""
        rows.append({"domain": r.domain, "topic": r.topic, "kind": RED_TEAM, "examples": examples, "prefix": primed})
        if syn.benign_questions_per_topic:
            rows.append({"domain": r.domain, "topic": r.topic, "kind": BENIGN, "examples": examples, "prefix": ""})
    if syn.everyday_questions_per_domain:
        for subject in seeds.everyday_domains:
            for _ in range(syn.everyday_samples):
                rows.append({"domain": subject, "topic": subject, "kind": EVERYDAY, "examples": [], "prefix": ""})
    n_q, n_benign, n_everyday = (
        syn.questions_per_topic,
        syn.benign_questions_per_topic,
        syn.everyday_questions_per_domain,
    )
    sampling = syn.question_sampling.to_vllm()

    def messages_of(r: dict) -> list[dict]:
        if r["kind"] == BENIGN:
            return benign_question_messages(r["domain"], r["topic"], n_benign)
        if r["kind"] == EVERYDAY:
            return everyday_question_messages(r["topic"], n_everyday)
        return question_messages(r["domain"], r["topic"], list(r["examples"]), n_q)

    gen = generate(
        ray_data.from_items(rows),
        model_path, cfg.model, cfg.engine,
        messages_of=messages_of,
        sampling_of=lambda r: sampling,
        keep=("domain", "topic", "kind"),
        prefix_of=lambda r: r["prefix"],
    ).materialize()  # fmt: skip
    stats = token_stats(gen)
    lo, hi = syn.min_question_chars, syn.max_question_chars

    def explode(row: dict) -> list[dict]:
        qs = parse_questions(row["generated_text"], lo, hi)
        return [{"domain": row["domain"], "topic": row["topic"], "kind": row["kind"], "question": q} for q in qs]

    threshold, exact_max = syn.dedup_threshold, syn.dedup_exact_max
    seed_refs = seeds.all_questions()

    def dedupe(batch: pd.DataFrame) -> pd.DataFrame:
        out = _dedupe_frame(batch.reset_index(drop=True), "question", threshold, exact_max, reference=seed_refs)
        out.insert(0, "id", [question_id(q) for q in out["question"]])
        return out

    parsed = gen.flat_map(explode).materialize()
    stats["questions_parsed"] = parsed.count()
    if stats["questions_parsed"]:
        # Global dedup needs every question in one place: one block, handled by the filter's index.
        df = parsed.repartition(1).map_batches(dedupe, batch_size=None, batch_format="pandas").to_pandas()
    else:
        df = pd.DataFrame(columns=["id", "domain", "topic", "kind", "question", "harm_prob"])
    stats["near_duplicates_dropped"] = stats["questions_parsed"] - len(df)  # every kind together
    return df, stats


def _step_screening(cfg: PipelineConfig, seeds: Seeds, questions: pd.DataFrame):
    """The question judge (synthesis/screening.py): harmful red-team questions stay red-team,
    clearly benign ones join the benign anchor, fragments and ambiguous ones are dropped."""
    syn = cfg.synthesis
    stats: dict = {"questions": len(questions)}
    if syn.screen_questions and len(questions):
        judge = QuestionJudge(seeds, syn.min_question_harm_prob, syn.max_benign_harm_prob)
        screened = judge.screen(questions)
        stats["by_kind"] = screening_counts(screened)
        df = relabel(screened)
    else:
        df = questions.assign(harm_prob=float("nan"))
    stats["questions_kept"] = int((df["kind"] == RED_TEAM).sum())
    stats["benign_questions_kept"] = int((df["kind"] == BENIGN).sum())
    stats["everyday_questions_kept"] = int((df["kind"] == EVERYDAY).sum())
    return df, stats


def _step_responses(
    ray_data, cfg: PipelineConfig, seeds: Seeds, model_path: str, questions: pd.DataFrame, chash: str, model_name: str
):
    """One generation pass: positive + toxic answers to red-team questions, the model's own
    answers (bare question, positive sampling) to benign ones. Returns (triplets, benign, stats)."""
    syn = cfg.synthesis
    params = {"positive": syn.positive_sampling.to_vllm(), "toxic": syn.toxic_sampling.to_vllm()}
    params[BENIGN] = params[OWN] = params[REFUSAL] = params["positive"]
    kinds = questions["kind"] if "kind" in questions else pd.Series(RED_TEAM, index=questions.index)
    red_sides = ("positive", "toxic", OWN) if syn.own_answers else ("positive", "toxic")
    benign_sides = (BENIGN, REFUSAL) if syn.benign_refusals else (BENIGN,)
    rows = []
    for r, kind in zip(questions.itertuples(), kinds):
        for p in red_sides if kind == RED_TEAM else benign_sides:
            rows.append({"id": r.id, "question": r.question, "polarity": p})

    def messages_of(r: dict) -> list[dict]:
        if r["polarity"] in (BENIGN, OWN, REFUSAL):  # the bare question: what the model itself does
            return benign_answer_messages(r["question"])
        return response_messages(seeds, r["question"], r["polarity"])

    def prefix_of(r: dict) -> str:
        if r["polarity"] == REFUSAL:  # the same refusal opening a red-team positive starts from
            return seeds.opening_for(r["question"], "positive")
        return "" if r["polarity"] in (BENIGN, OWN) else seeds.opening_for(r["question"], r["polarity"])

    gen = generate(
        ray_data.from_items(rows),
        model_path, cfg.model, cfg.engine,
        messages_of=messages_of,
        sampling_of=lambda r: params[r["polarity"]],
        keep=("id", "polarity"),
        prefix_of=prefix_of,
    ).materialize()  # fmt: skip
    stats = token_stats(gen)
    out = gen.to_pandas()
    out["generated_text"] = out["generated_text"].str.strip()
    red = out[~out["polarity"].isin([BENIGN, REFUSAL])]
    wide = red.pivot(index="id", columns="polarity", values=["generated_text", "num_generated_tokens"])
    df = (
        questions[kinds == RED_TEAM]
        .drop(columns=["kind"], errors="ignore")
        .set_index("id")
        .join(
            pd.DataFrame(
                {
                    "positive": wide[("generated_text", "positive")],
                    "toxic": wide[("generated_text", "toxic")],
                    # the model's own answer to the bare question: a toxic candidate refinement may prefer
                    "own": wide[("generated_text", OWN)] if syn.own_answers else None,
                    "positive_tokens": wide[("num_generated_tokens", "positive")].astype(int),
                    "toxic_tokens": wide[("num_generated_tokens", "toxic")].astype(int),
                }
            ),
            how="inner",
        )
        .reset_index()
    )
    if "harm_prob" not in df:
        df["harm_prob"] = float("nan")
    df["positive_truncated"] = df["positive_tokens"] >= params["positive"]["max_tokens"]
    df["toxic_truncated"] = df["toxic_tokens"] >= params["toxic"]["max_tokens"]
    empty = (df["positive"] == "") | (df["toxic"] == "")
    stats["empty_responses_dropped"] = int(empty.sum())
    df = df[~empty].reset_index(drop=True)
    df["model"] = model_name
    df["config_hash"] = chash
    stats["triplets"] = len(df)

    answers = out[out["polarity"] == BENIGN].set_index("id")
    refusals = out[out["polarity"] == REFUSAL].set_index("id")["generated_text"]
    benign = questions[kinds != RED_TEAM].drop(columns=["harm_prob"], errors="ignore").set_index("id").join(
        pd.DataFrame({"response": answers["generated_text"], "response_tokens": answers["num_generated_tokens"].astype(int),
                      "refusal": refusals.reindex(answers.index)}),
        how="inner",
    ).reset_index() if len(answers) else pd.DataFrame(columns=BENIGN_COLUMNS)  # fmt: skip
    benign["response_truncated"] = benign["response_tokens"] >= params[BENIGN]["max_tokens"]
    stats["empty_responses_dropped"] += int((benign["response"] == "").sum())
    benign = benign[benign["response"] != ""].reset_index(drop=True)
    benign["model"] = model_name
    benign["config_hash"] = chash
    stats["benign_answers"] = len(benign)
    return df[COLUMNS], benign[BENIGN_COLUMNS], stats


def synthesize(cfg: PipelineConfig, run: RunDir, model_path: str, force: bool = False, log=print) -> dict:
    """Runs (or resumes) the synthesis stage; returns its manifest. A finished stage is a no-op."""
    return run_stage(SYNTHESIZE, Context(cfg, run, model_path, log=log, force=force))


def _config_hash(ctx: Context, upstream: dict) -> str:
    return config_hash(ctx.cfg, load_seeds(ctx.cfg.seeds))


def _run(ctx: Context) -> dict:
    """The four steps; topics, questions and screening are checkpointed in the work folder."""
    import ray.data as ray_data

    cfg, model_path, log, chash = ctx.cfg, ctx.model_path, ctx.log, ctx.config_hash
    seeds = load_seeds(cfg.seeds)
    work = ctx.work
    # the question judge's settings do not change what the model wrote: tuning them keeps these steps
    ghash = hashlib.sha256(f"{generation_hash(cfg)}:{seeds_hash(seeds)}".encode()).hexdigest()[:16]
    timer = StepTimer()
    log(
        f"[synthesis] {len(seeds.domains)} domains, {seeds.annotation_count} seed annotations, model {cfg.model.name_or_path}"
    )

    if cfg.synthesis.screen_questions:  # the question judge is built while the engine starts
        from ptalign_ray.judging.offline import build_shared_judge_in_background

        build_shared_judge_in_background(seeds)
    with timer.step("topics") as rec:
        topics, stats = checkpointed(work, "topics", ghash, lambda: _step_topics(ray_data, cfg, seeds, model_path))
        rec.update(stats)
    log(f"[synthesis] topics: {rec['topics_kept']} kept of {rec['topics_parsed']} parsed ({rec['seconds']}s)")
    if topics.empty:
        raise RuntimeError("the model produced no usable topics; check the model and synthesis.topic_sampling")

    with timer.step("questions") as rec:
        raw, stats = checkpointed(
            work, "questions", ghash, lambda: _step_questions(ray_data, cfg, seeds, model_path, topics)
        )
        rec.update(stats)
    log(f"[synthesis] questions: {rec['questions_parsed']} parsed, {rec['near_duplicates_dropped']} near-duplicates "
        f"dropped ({rec['seconds']}s)")  # fmt: skip
    with timer.step("screening") as rec:
        questions, stats = checkpointed(work, "screening", chash, lambda: _step_screening(cfg, seeds, raw))
        rec.update(stats)
    red = rec.get("by_kind", {}).get(RED_TEAM)
    if red:
        log(f"[synthesis] question judge: {red.get(RED_TEAM, 0)} of {red['generated']} red-team questions judged harmful "
            f"({100 * red['harmful_share']:.0f}%), {red.get('benign', 0)} benign, {red.get('ambiguous', 0)} ambiguous, "
            f"{red.get('fragment', 0)} fragments")  # fmt: skip
    log(f"[synthesis] questions kept: {rec['questions_kept']} red-team, {rec['benign_questions_kept']} benign, "
        f"{rec['everyday_questions_kept']} everyday")  # fmt: skip
    if rec["questions_kept"] == 0:
        raise RuntimeError(
            "no red-team question was judged harmful; check synthesis.question_sampling or lower "
            "synthesis.min_question_harm_prob"
        )

    with timer.step("responses") as rec:
        triplets, benign, stats = _step_responses(
            ray_data, cfg, seeds, model_path, questions, chash, cfg.model.name_or_path
        )
        rec.update(stats)
    log(
        f"[synthesis] responses: {rec['triplets']} triplets, {rec['benign_answers']} benign answers ({rec['seconds']}s)"
    )

    generated = sum(s.get("generated_tokens", 0) for s in timer.steps.values())
    manifest = {
        "model": cfg.model.name_or_path,
        "model_path": model_path,
        "seeds": {"source": cfg.seeds, "hash": seeds_hash(seeds), **seeds.annotation_breakdown,
                  "total": seeds.annotation_count},
        "steps": timer.steps,
        "counts": {
            "domains": len(seeds.domains),
            "topics": len(topics),
            "questions": timer.steps["screening"]["questions_kept"],
            "triplets": len(triplets),
            "benign_questions": timer.steps["screening"]["benign_questions_kept"],
            "everyday_questions": timer.steps["screening"]["everyday_questions_kept"],
            "benign_answers": int((benign["kind"] == BENIGN).sum()),
            "everyday_answers": int((benign["kind"] == EVERYDAY).sum()),
        },
        "tokens": {
            "generated": generated,
            "input": sum(s.get("input_tokens", 0) for s in timer.steps.values()),
        },
        "wall_seconds": timer.wall_seconds,
        "time_budget": timer.time_budget(),
        "generated_tokens_per_second": round(generated / max(timer.wall_seconds, 1e-9), 1),
        "config": cfg.model_dump(mode="json", include={"model", "synthesis", "engine", "seed"}),
    }  # fmt: skip
    write_parquet_atomic(triplets, ctx.out / "data" / "triplets.parquet")
    write_parquet_atomic(benign, ctx.out / BENIGN_DIR / "benign.parquet")
    return manifest


def print_summary(manifest: dict, ctx: Context) -> None:
    """The `== synthesis summary ==` block: counts, then tokens and time per generation step."""
    _log = ctx.log
    steps = manifest["steps"]
    _log("")
    _log("== synthesis summary ==")
    _log(f"  seed annotations : {manifest['seeds']['total']} ({manifest['seeds']['domains']} domains)")
    t = steps["topics"]
    _log(f"  topics           : {t['topics_kept']} kept / {t['topics_parsed']} parsed from {t['rows']} brainstorms")
    q = steps["questions"]
    sc = steps.get("screening", {})
    _log(
        f"  questions        : {sc.get('questions_kept', 0)} red-team kept / {q['questions_parsed']} parsed from {q['rows']} "
        f"prompts ({q['near_duplicates_dropped']} near-duplicates removed)"
    )
    r = steps["responses"]
    _log(
        f"  triplets         : {r['triplets']} (question, positive, toxic); {r['empty_responses_dropped']} dropped empty"
    )
    red = (sc.get("by_kind") or {}).get("red_team")
    if red:
        _log(f"  question judge   : {red.get('red_team', 0)} of {red['generated']} red-team questions judged harmful "
             f"({red['harmful_share']:.0%}); {red.get('benign', 0)} moved to benign, {red.get('ambiguous', 0)} ambiguous "
             f"and {red.get('fragment', 0)} fragments dropped")  # fmt: skip
    if sc.get("benign_questions_kept") or sc.get("everyday_questions_kept"):
        _log(f"  benign anchor    : {sc.get('benign_questions_kept', 0)} edgy + {sc.get('everyday_questions_kept', 0)} "
             f"everyday questions, {r['benign_answers']} answered by the model")  # fmt: skip
    for name in ("topics", "questions", "responses"):
        s = steps[name]
        start = s.get("engine_start_s", 0.0)
        work = s["seconds"] - start
        rate = s["generated_tokens"] / work if work > 0 else 0.0
        resumed = " (resumed from checkpoint)" if s.get("resumed") else ""
        started = f" + engine start {start:.1f}s" if start else ""
        _log(
            f"  {name:<16} : {s['generated_tokens']:>7} tokens generated in {work:>6.1f}s ({rate:.0f} tok/s){started}{resumed}"
        )
    _log(
        f"  total            : {manifest['tokens']['generated']} tokens, {manifest['wall_seconds']:.1f}s wall, "
        f"{manifest['generated_tokens_per_second']:.0f} tok/s"
    )
    _log(f"  output           : {ctx.run.stage_dir(STAGE) / 'data'}")


SYNTHESIZE = Stage(
    name=STAGE,
    command="synthesize",
    help="seeds -> topics -> questions -> positive/toxic responses (Ray Data + vLLM)",
    run=_run,
    summary=print_summary,
    config_hash=_config_hash,
)
