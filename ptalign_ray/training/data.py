"""Training examples: dataset rows -> token ids + MLE / UT masks, all checked before training starts.

One row per question holds both sequences (positive and toxic), so the two always land in the same
step. The training prompt is the bare question as one user turn - no constraints, no exemplars: the
model must behave safely without them. Rendering goes through :mod:`ptalign_ray.chat_template`, the
same module synthesis and serving use.

Every sample is checked (supervised share strictly between 0 and 1, no special token inside either
response span, none inside the UT mask); a violation stops the run with a TrainingDataError naming the
sample id. Some samples are dropped on purpose and counted instead:

- ``dropped_empty_ut``: the UT mask is legitimately empty - in ``diff`` mode every toxic token also
  occurs in the positive answer, in ``judge`` mode the judge marked no harmful span. The whole pair
  is dropped (not just the UT half) so every training row carries both halves of the objective.
- ``dropped_overlong``: a sequence is longer than ``max_seq_len`` and ``overlong == 'drop'``.
- ``dropped_truncated_empty``: ``overlong == 'truncate'`` cut away every supervised token of a side.
- ``dropped_no_rejected``: the objective trains on pairs only (``Objective.pairs_only``, e.g. DPO)
  and the row has no rejected answer (a benign answer without a refusal, a recovery row).

What the toxic (rejected) mask covers is the objective's choice (``Objective.rejected_mask``): the
unlikelihood mask of ``training.mask_mode`` for PT-ALIGN, every response token for DPO.

Benign rows (the model's own answers to benign and everyday questions, from the stage's ``benign/``
folder) anchor the helpful behaviour next to the refusals with MLE. With
``synthesis.benign_refusals`` a benign row also carries a refusal-primed answer as its toxic side
(UT on its tokens that the helpful answer does not share); without one, its toxic sequence is the
prompt alone with an all-zero UT mask, so it adds MLE tokens only.

Recovery rows (``training.recovery_fraction``, safety-recovery augmentation after Qi et al. 2024)
put the first words of a toxic answer in front of the positive answer and supervise only the
positive part, so a sampled compliant start is not a point of no return. ``training.mix`` fixes the
shares of red-team pairs, edgy benign and everyday answers by seeded subsampling.

Tokenisation runs once, in a Ray Data ``map_batches``, never in the workers' training loop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import pandas as pd

from ptalign_ray.artifacts import BENIGN, EVERYDAY, load_benign
from ptalign_ray.chat_template import TemplateError, encode_example, load_tokenizer
from ptalign_ray.config import TrainingConfig
from ptalign_ray.runs import RunDir
from ptalign_ray.training.masks import MaskError, check_example, mle_targets, ut_targets
from ptalign_ray.training.objectives import OBJECTIVES

SOURCE_STAGES = ("refinement", "synthesis")  # preferred first
REQUIRED_COLUMNS = ("id", "question", "positive", "toxic")
JUDGE_SPANS_COLUMN = "toxic_harmful_spans"
DROP_REASONS = ("dropped_empty_ut", "dropped_overlong", "dropped_truncated_empty", "dropped_no_rejected")
# Columns of an encoded row that the workers read.
TRAIN_COLUMNS = ["id", "pos_ids", "pos_mask", "tox_ids", "tox_mask"]
RECOVERY = "recovery"
MLE_ONLY_KINDS = (BENIGN, EVERYDAY, RECOVERY)  # rows with no toxic side


class TrainingDataError(ValueError):
    """A sample or dataset that must not be trained on; the message names the sample id."""


def training_prompt(question: str) -> list[dict]:
    """The prompt the model is trained on: the question alone, as one user turn."""
    return [{"role": "user", "content": question}]


def special_ids(tokenizer) -> frozenset[int]:
    """Every special id of the tokenizer: role/template markers, EOS, BOS, pad, added specials."""
    ids = set(tokenizer.all_special_ids)
    for tid, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            ids.add(int(tid))
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            ids.add(int(value))
    return frozenset(ids)


def _check_response_span(sample_id: str, side: str, ex, specials: frozenset[int], tokenizer) -> None:
    for pos in range(ex.response_start, ex.response_end):
        tok = ex.input_ids[pos]
        if tok in specials:
            raise TrainingDataError(
                f"sample {sample_id!r}: the {side} response contains special token {tokenizer.convert_ids_to_tokens(tok)!r} "
                f"(id {tok}) at position {pos}; role/template/EOS/pad tokens must not be inside a response span "
                "(a broken chat template or unclean generated text)"
            )


def _truncate(ids: list[int], mask: list[bool], max_len: int) -> tuple[list[int], list[bool], bool]:
    if len(ids) <= max_len:
        return ids, mask, False
    return ids[:max_len], mask[:max_len], True


def _shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _prefix_end(tokenizer, prompt: list[dict], full, prefix: str) -> int:
    """Index in ``full.input_ids`` where the tokens of the response's leading ``prefix`` text end
    (tokens shared by the prefix-only rendering; a token straddling the boundary counts as prefix)."""
    alone = encode_example(tokenizer, prompt, prefix)
    return max(full.response_start, min(_shared_prefix(full.input_ids, alone.input_ids), alone.response_end) + 1)


def encode_pair(
    row: dict,
    tokenizer,
    tcfg: TrainingConfig,
    specials: Optional[frozenset[int]] = None,
    toxic_openings: tuple[str, ...] = (),
    exempt_ids: frozenset[int] = frozenset(),
) -> dict:
    """One dataset row -> an encoded training row with a ``status`` ('ok' or a DROP_REASONS entry).

    ``toxic_openings`` (with ``training.ut_skip_openings``): injected toxic openings kept out of the
    UT mask; ``exempt_ids`` (``training.ut_exempt_common``): token ids kept out of a red-team pair's UT
    mask. Raises TrainingDataError naming the sample for anything that means a broken template or mask.
    """
    sid = str(row["id"])
    specials = special_ids(tokenizer) if specials is None else specials
    objective = OBJECTIVES[tcfg.objective]
    prompt = training_prompt(str(row["question"]))
    toxic = row.get("toxic")
    if row.get("kind") == RECOVERY or (
        row.get("kind") in MLE_ONLY_KINDS and not (isinstance(toxic, str) and toxic.strip())
    ):
        if objective.pairs_only:
            return {"id": sid, "status": "dropped_no_rejected", "pos_truncated": False, "tox_truncated": False}
        prefix = str(row.get("prefix") or "") if row.get("kind") == RECOVERY else ""
        return _encode_benign(sid, prompt, str(row["positive"]), tokenizer, tcfg, specials, prefix)
    # a red-team pair, or a benign question with a refusal-primed answer as its toxic side
    try:
        pos = encode_example(tokenizer, prompt, str(row["positive"]))
        tox = encode_example(tokenizer, prompt, str(row["toxic"]))
    except TemplateError as err:
        raise TrainingDataError(f"sample {sid!r}: {err}") from None
    _check_response_span(sid, "positive", pos, specials, tokenizer)
    _check_response_span(sid, "toxic", tox, specials, tokenizer)

    out: dict[str, Any] = {"id": sid, "status": "ok", "pos_truncated": False, "tox_truncated": False}
    pos_mask = mle_targets(pos)
    if objective.rejected_mask == "response":  # the whole rejected answer, like the chosen one
        return _finish_pair(sid, out, pos.input_ids, pos_mask, tox.input_ids, mle_targets(tox), tcfg, specials, True)
    spans = None
    if tcfg.mask_mode == "judge":
        raw = row.get(JUDGE_SPANS_COLUMN)  # a list, or a numpy array of pairs when read from Parquet
        spans = [] if raw is None else [(int(s[0]), int(s[1])) for s in raw]
    if tcfg.mask_mode == "judge" and not spans:
        return {**out, "status": "dropped_empty_ut"}
    try:
        tox_mask = ut_targets(tox, pos, tcfg.mask_mode, harmful_spans=spans, special_ids=specials)
    except ValueError as err:
        raise TrainingDataError(f"sample {sid!r}: {err}") from None
    toxic_text = str(row["toxic"])
    opening = next((o for o in toxic_openings if tcfg.ut_skip_openings and toxic_text.startswith(o)), None)
    if opening and toxic_text.strip() != opening.strip():
        cut = _prefix_end(tokenizer, prompt, tox, opening)
        tox_mask[:cut] = [False] * cut
    if exempt_ids and row.get("kind") not in MLE_ONLY_KINDS:
        tox_mask = [on and tok not in exempt_ids for tok, on in zip(tox.input_ids, tox_mask)]
    if not any(tox_mask):
        if row.get("kind") in MLE_ONLY_KINDS:  # a benign answer stays in the anchor without its refusal
            return _encode_benign(sid, prompt, str(row["positive"]), tokenizer, tcfg, specials)
        return {**out, "status": "dropped_empty_ut"}
    return _finish_pair(sid, out, pos.input_ids, pos_mask, tox.input_ids, tox_mask, tcfg, specials, False)


def _finish_pair(
    sid: str, out: dict, pos_ids, pos_mask, tox_ids, tox_mask, tcfg, specials, whole_rejected: bool
) -> dict:
    """Over-long handling and the mask checks of a pair. ``whole_rejected``: the rejected mask is the
    whole response with its end-of-turn (checked like an MLE mask), else a UT mask (no special token)."""
    if max(len(pos_ids), len(tox_ids)) > tcfg.max_seq_len:
        if tcfg.overlong == "drop":
            return {**out, "status": "dropped_overlong"}
        pos_ids, pos_mask, out["pos_truncated"] = _truncate(pos_ids, pos_mask, tcfg.max_seq_len)
        tox_ids, tox_mask, out["tox_truncated"] = _truncate(tox_ids, tox_mask, tcfg.max_seq_len)
        if not any(pos_mask) or not any(tox_mask):
            return {**out, "status": "dropped_truncated_empty"}

    try:
        check_example(sid, pos_ids, mle_mask=pos_mask)
        if whole_rejected:
            check_example(sid, tox_ids, mle_mask=tox_mask)
        else:
            check_example(sid, tox_ids, ut_mask=tox_mask, special_ids=specials)
    except MaskError as err:
        raise TrainingDataError(str(err)) from None
    return {
        **out,
        "pos_ids": pos_ids,
        "pos_mask": [int(m) for m in pos_mask],
        "tox_ids": tox_ids,
        "tox_mask": [int(m) for m in tox_mask],
    }


def _encode_benign(
    sid: str, prompt: list[dict], answer: str, tokenizer, tcfg: TrainingConfig, specials, prefix: str = ""
) -> dict:
    """An MLE-only row; with ``prefix`` (a recovery row) the answer is prefix + answer and only the
    answer's tokens are supervised."""
    try:
        pos = encode_example(tokenizer, prompt, f"{prefix} {answer}" if prefix else answer)
        cut = _prefix_end(tokenizer, prompt, pos, prefix) if prefix else 0
    except TemplateError as err:
        raise TrainingDataError(f"sample {sid!r}: {err}") from None
    _check_response_span(sid, "benign", pos, specials, tokenizer)
    out: dict[str, Any] = {"id": sid, "status": "ok", "pos_truncated": False, "tox_truncated": False}
    pos_ids, pos_mask = pos.input_ids, mle_targets(pos)
    pos_mask[:cut] = [False] * cut
    if len(pos_ids) > tcfg.max_seq_len:
        if tcfg.overlong == "drop":
            return {**out, "status": "dropped_overlong"}
        pos_ids, pos_mask, out["pos_truncated"] = _truncate(pos_ids, pos_mask, tcfg.max_seq_len)
        if not any(pos_mask):
            return {**out, "status": "dropped_truncated_empty"}
    try:
        check_example(sid, pos_ids, mle_mask=pos_mask)
    except MaskError as err:
        raise TrainingDataError(str(err)) from None
    tox_ids = pos_ids[: pos.response_start]  # the prompt alone: a valid sequence that adds no UT tokens
    return {
        **out,
        "pos_ids": pos_ids,
        "pos_mask": [int(m) for m in pos_mask],
        "tox_ids": tox_ids,
        "tox_mask": [0] * len(tox_ids),
    }


def encode_frame(
    df: pd.DataFrame,
    tokenizer,
    tcfg: TrainingConfig,
    toxic_openings: tuple[str, ...] = (),
    exempt_ids: frozenset[int] = frozenset(),
) -> pd.DataFrame:
    """Encodes a batch of rows; problems become ``status='error'`` rows (message in ``error``).

    Errors are carried as data rather than raised inside a Ray task, so the driver can stop the run
    with the plain message (naming the sample) instead of a remote traceback.
    """
    specials = special_ids(tokenizer)
    rows = []
    for row in df.to_dict("records"):
        try:
            enc = encode_pair(row, tokenizer, tcfg, specials, toxic_openings, exempt_ids)
        except TrainingDataError as err:
            enc = {"id": str(row["id"]), "status": "error", "error": str(err)}
        enc.setdefault("error", "")
        for key in ("pos_ids", "pos_mask", "tox_ids", "tox_mask"):
            enc.setdefault(key, [])
        enc.setdefault("pos_truncated", False)
        enc.setdefault("tox_truncated", False)
        enc["split"] = row.get("split", "train")
        enc["kind"] = row.get("kind") or "red_team"
        rows.append(enc)
    columns = ["id", "split", "kind", "status", "error", "pos_truncated", "tox_truncated", *TRAIN_COLUMNS[1:]]
    return pd.DataFrame(rows, columns=columns)


def holdout_ids(ids: list[str], fraction: float, seed: int) -> set[str]:
    """A seeded, order-independent held-out split by question id (at least one id on each side)."""
    unique = sorted(set(str(i) for i in ids))
    if fraction <= 0 or len(unique) < 2:
        return set()
    n = min(max(1, round(fraction * len(unique))), len(unique) - 1)
    random.Random(seed).shuffle(unique)
    return set(unique[:n])


def source_stage(run: RunDir) -> str:
    """The refined dataset when refinement has finished, else the synthesis triplets."""
    for stage in SOURCE_STAGES:
        if run.is_done(stage):
            return stage
    raise FileNotFoundError(f"no dataset in {run.root}: run `ptalign synthesize` (and `ptalign refine`) first")


def load_source(run: RunDir, tcfg: TrainingConfig) -> tuple[str, pd.DataFrame]:
    """Reads the training source stage's Parquet data and checks the columns training needs."""
    stage = source_stage(run)
    df = pd.read_parquet(run.data_dir(stage))
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise TrainingDataError(f"the {stage} dataset in {run.data_dir(stage)} lacks columns {missing}")
    if tcfg.mask_mode == "judge" and JUDGE_SPANS_COLUMN not in df.columns:
        raise TrainingDataError(
            f"training.mask_mode 'judge' needs a '{JUDGE_SPANS_COLUMN}' column (harmful token spans from the judge) "
            f"but the {stage} dataset has none; use mask_mode 'diff' or 'all'"
        )
    if df.empty:
        raise TrainingDataError(f"the {stage} dataset in {run.data_dir(stage)} has no rows")
    if not df["id"].astype(str).is_unique:
        raise TrainingDataError(f"the {stage} dataset has duplicate ids; each question must appear once")
    return stage, df


@dataclass
class TrainingData:
    """Pre-tokenised training and held-out rows as Ray Datasets, with the counts of what was dropped."""

    train: Any  # ray.data.Dataset
    holdout: Optional[Any]  # ray.data.Dataset, None when there is no held-out split
    source: str
    stats: dict = field(default_factory=dict)


def _summarise(enc: pd.DataFrame, n_rows: int) -> dict:
    ok = enc[enc["status"] == "ok"]
    stats = {"rows": n_rows, "kept": int(len(ok))}
    for reason in DROP_REASONS:
        stats[reason] = int((enc["status"] == reason).sum())
    stats["truncated_positive"] = int(ok["pos_truncated"].sum())
    stats["truncated_toxic"] = int(ok["tox_truncated"].sum())
    kind = ok["kind"] if "kind" in ok else pd.Series("red_team", index=ok.index)
    benign = kind.isin(MLE_ONLY_KINDS)
    stats["train_pairs"] = int(((ok["split"] == "train") & ~benign).sum())
    stats["holdout_pairs"] = int(((ok["split"] == "holdout") & ~benign).sum())
    stats["train_benign"] = int(((ok["split"] == "train") & benign).sum())
    stats["holdout_benign"] = int(((ok["split"] == "holdout") & benign).sum())
    stats["train_by_kind"] = {str(k): int(v) for k, v in kind[ok["split"] == "train"].value_counts().items()}
    stats["positive_supervised_tokens"] = int(sum(sum(m) for m in ok["pos_mask"]))
    stats["toxic_masked_tokens"] = int(sum(sum(m) for m in ok["tox_mask"]))
    stats["tokens"] = int(sum(len(a) + len(b) for a, b in zip(ok["pos_ids"], ok["tox_ids"])))
    return stats


def check_encoded(enc: pd.DataFrame, n_rows: int) -> dict:
    """Stops the run on the first invalid sample (naming it); returns the counts of what was kept."""
    errors = enc[enc["status"] == "error"]
    if len(errors):
        more = f" (and {len(errors) - 1} more sample(s) with problems)" if len(errors) > 1 else ""
        raise TrainingDataError(f"{errors.iloc[0]['error']}{more}; nothing was trained")
    stats = _summarise(enc, n_rows)
    if stats["train_pairs"] == 0:
        raise TrainingDataError(f"no training pairs left after the checks: {stats}")
    return stats


def apply_mix(frame: pd.DataFrame, mix: Optional[dict[str, float]], seed: int) -> tuple[pd.DataFrame, dict]:
    """Seeded subsample of each kind so the kinds' shares equal ``mix`` (the scarcest kind, relative
    to its share, sets the total). Kinds absent from ``mix`` are dropped; None keeps every row."""
    available = frame["kind"].value_counts().to_dict()
    if not mix:
        return frame, {"shares": None, "available": available}
    wanted = {k: v for k, v in mix.items() if v > 0}
    total = min(available.get(k, 0) / v for k, v in wanted.items() if available.get(k, 0) or k == "red_team")
    parts = []
    for k, share in wanted.items():
        part = frame[frame["kind"] == k]
        parts.append(part.sample(n=min(len(part), round(total * share)), random_state=seed))
    out = pd.concat(parts).sort_index() if parts else frame.iloc[:0]
    return out, {"shares": mix, "available": available, "used": out["kind"].value_counts().to_dict()}


def common_answer_ids(answers: list[str], tokenizer, share: float) -> frozenset[int]:
    """Token ids that occur in at least ``share`` of the helpful answers (document frequency): the words of
    helpfulness in general, which unlikelihood on a red-team pair should not teach the model to avoid."""
    if share <= 0 or not answers:
        return frozenset()
    counts: dict[int, int] = {}
    for text in answers:
        for tok in set(tokenizer(text, add_special_tokens=False)["input_ids"]):
            counts[tok] = counts.get(tok, 0) + 1
    return frozenset(tok for tok, n in counts.items() if n >= share * len(answers))


def recovery_rows(pairs: pd.DataFrame, fraction: float, max_words: int, seed: int) -> pd.DataFrame:
    """Safety-recovery rows for a seeded share of the red-team pairs: a random 1..max_words-word start
    of the toxic answer as the prefix, the positive answer as the supervised continuation."""
    if fraction <= 0 or pairs.empty:
        return pairs.iloc[:0].assign(prefix=[])
    rng = random.Random(seed)
    chosen = pairs.sample(n=max(1, round(fraction * len(pairs))), random_state=seed)
    rows = []
    for r in chosen.itertuples():
        words = str(r.toxic).split()
        if len(words) < 2:
            continue
        k = rng.randint(1, min(max_words, len(words) - 1))
        rows.append({"id": f"{r.id}:recovery", "question": r.question, "positive": r.positive, "toxic": None,
                     "prefix": " ".join(words[:k]), "kind": RECOVERY})  # fmt: skip
    return pd.DataFrame(rows, columns=["id", "question", "positive", "toxic", "prefix", "kind"])


ENCODE_BATCH_ROWS = 256


def prepare_training_data(
    run: RunDir,
    model_path: str,
    tcfg: TrainingConfig,
    trust_remote_code: bool = False,
    log: Callable = print,
    toxic_openings: tuple[str, ...] = (),
    encode_batch_rows: int = ENCODE_BATCH_ROWS,
) -> TrainingData:
    """Loads the source dataset, tokenises and checks it, splits off the held-out ids.

    Tokenising fans out over Ray Data in batches of ``encode_batch_rows``; rows that fit one batch are
    encoded here, by the same function.
    """
    import ray.data

    stage, df = load_source(run, tcfg)
    benign = load_benign(run, stage)
    cols = [c for c in (*REQUIRED_COLUMNS, JUDGE_SPANS_COLUMN) if c in df.columns]
    frame = df[cols].assign(kind="red_team")
    if len(benign):
        extra = benign.reindex(columns=["id", "question", "response", "kind", "refusal"])
        extra = extra.rename(columns={"response": "positive", "refusal": "toxic"})
        frame = pd.concat([frame, extra], ignore_index=True)
    frame, mix_stats = apply_mix(frame, tcfg.mix, tcfg.seed)
    counts = frame["kind"].value_counts().to_dict()
    log(f"[training] data from the '{stage}' stage ({run.data_dir(stage)}): "
        + ", ".join(f"{v} {k}" for k, v in counts.items()) + (" (after training.mix)" if tcfg.mix else ""))  # fmt: skip
    frame = frame.copy()
    frame["id"] = frame["id"].astype(str)
    held: set[str] = set()
    for _, part in frame.groupby("kind"):
        held |= holdout_ids(part["id"].tolist(), tcfg.holdout_fraction, tcfg.seed) if len(part) > 1 else set()
    frame["split"] = ["holdout" if i in held else "train" for i in frame["id"]]
    recovery = recovery_rows(frame[(frame["kind"] == "red_team") & (frame["split"] == "train")],
                             tcfg.recovery_fraction, tcfg.recovery_max_words, tcfg.seed)  # fmt: skip
    if len(recovery):
        frame = pd.concat([frame, recovery.assign(split="train")], ignore_index=True)

    helpful = frame[frame["kind"].isin((BENIGN, EVERYDAY)) & (frame["split"] == "train")]["positive"]
    exempt = common_answer_ids([str(a) for a in helpful], load_tokenizer(model_path, trust_remote_code),
                               tcfg.ut_exempt_common)  # fmt: skip

    def encode(batch: pd.DataFrame) -> pd.DataFrame:
        tokenizer = load_tokenizer(model_path, trust_remote_code)
        return encode_frame(batch, tokenizer, tcfg, toxic_openings, exempt)

    if len(frame) <= encode_batch_rows:  # one batch: a Ray Data task would only add a worker's start (3-7 s)
        enc = encode(frame.reset_index(drop=True))
    else:
        enc = ray.data.from_pandas(frame).map_batches(encode, batch_format="pandas", batch_size=encode_batch_rows)
        enc = enc.to_pandas()
    stats = check_encoded(enc, len(frame))
    stats["mix"] = mix_stats
    stats["ut_exempt_ids"] = len(exempt)
    ok = enc[enc["status"] == "ok"]
    train = ok[ok["split"] == "train"][TRAIN_COLUMNS].reset_index(drop=True)
    holdout = ok[ok["split"] == "holdout"][TRAIN_COLUMNS].reset_index(drop=True)
    return TrainingData(
        train=ray.data.from_pandas(train),
        holdout=ray.data.from_pandas(holdout) if len(holdout) else None,
        source=stage,
        stats=stats,
    )
