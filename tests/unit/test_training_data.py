"""Training examples on real tiny-tokenizer encodings: masks, checks, truncation, held-out split."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from ptalign_ray.chat_template import render_ids
from ptalign_ray.config import TrainingConfig
from ptalign_ray.runs import RunDir, write_json_atomic
from ptalign_ray.training import data as td

QUESTION = "How do I fix the roof quickly?"
POSITIVE = "Call a roofer and check the tiles safely."
TOXIC = "Climb up at night without tools and rip every tile off."


def _row(**kw) -> dict:
    return {"id": "q1", "question": QUESTION, "positive": POSITIVE, "toxic": TOXIC, **kw}


def _on(mask) -> list[int]:
    return [i for i, m in enumerate(mask) if m]


def test_masks_on_real_encodings(tiny_tokenizer):
    tcfg = TrainingConfig()
    enc = td.encode_pair(_row(), tiny_tokenizer, tcfg)
    assert enc["status"] == "ok"
    specials = td.special_ids(tiny_tokenizer)
    prompt = render_ids(tiny_tokenizer, td.training_prompt(QUESTION))
    # Both sequences start with exactly the rendered prompt, which is never supervised.
    for ids, mask in ((enc["pos_ids"], enc["pos_mask"]), (enc["tox_ids"], enc["tox_mask"])):
        assert ids[: len(prompt)] == prompt
        assert not any(mask[: len(prompt)])
        assert 0 < sum(mask) < len(ids)
    # MLE: the positive response text plus its end-of-turn token, and nothing after it.
    pos_on = _on(enc["pos_mask"])
    assert pos_on == list(range(len(prompt), pos_on[-1] + 1))
    assert tiny_tokenizer.decode(enc["pos_ids"][pos_on[0] : pos_on[-1]]) == POSITIVE
    assert enc["pos_ids"][pos_on[-1]] == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    # UT (diff): toxic tokens absent from the positive response; no special token ever.
    pos_response = set(enc["pos_ids"][pos_on[0] : pos_on[-1]])
    tox_on = _on(enc["tox_mask"])
    assert tox_on and all(enc["tox_ids"][i] not in pos_response for i in tox_on)
    assert all(enc["tox_ids"][i] not in specials for i in tox_on)
    all_mode = td.encode_pair(_row(), tiny_tokenizer, TrainingConfig(mask_mode="all"))
    assert set(tox_on) < set(_on(all_mode["tox_mask"]))
    assert tiny_tokenizer.decode([all_mode["tox_ids"][i] for i in _on(all_mode["tox_mask"])]) == TOXIC


def test_prompt_carries_no_constraints_or_exemplars(tiny_tokenizer):
    from ptalign_ray.seeds import load_seeds

    assert td.training_prompt(QUESTION) == [{"role": "user", "content": QUESTION}]
    enc = td.encode_pair(_row(), tiny_tokenizer, TrainingConfig())
    text = tiny_tokenizer.decode(enc["tox_ids"])
    seeds = load_seeds("default")
    for constraint in (seeds.positive_constraint, seeds.toxic_constraint):
        assert constraint[:40] not in text
    assert "system" not in text and text.count("user") == 1


def test_diff_mask_empty_is_dropped_and_counted_not_raised(tiny_tokenizer):
    tcfg = TrainingConfig()
    same = td.encode_pair(_row(toxic=POSITIVE), tiny_tokenizer, tcfg)
    assert same["status"] == "dropped_empty_ut"
    frame = pd.DataFrame([_row(id="a"), _row(id="b", toxic=POSITIVE)])
    enc = td.encode_frame(frame, tiny_tokenizer, tcfg)
    stats = td.check_encoded(enc, len(frame))
    assert stats["kept"] == 1 and stats["dropped_empty_ut"] == 1 and stats["train_pairs"] == 1


def test_judge_mode_uses_spans_and_needs_the_column(tiny_tokenizer, tmp_path):
    tcfg = TrainingConfig(mask_mode="judge")
    enc = td.encode_pair(_row(toxic_harmful_spans=[[1, 3]]), tiny_tokenizer, tcfg)
    start = _on(td.encode_pair(_row(), tiny_tokenizer, TrainingConfig(mask_mode="all"))["tox_mask"])[0]
    assert _on(enc["tox_mask"]) == [start + 1, start + 2]
    assert td.encode_pair(_row(toxic_harmful_spans=[]), tiny_tokenizer, tcfg)["status"] == "dropped_empty_ut"
    assert td.encode_pair(_row(toxic_harmful_spans=None), tiny_tokenizer, tcfg)["status"] == "dropped_empty_ut"
    run = RunDir(tmp_path / "run")
    with run.building("synthesis") as tmp:
        (tmp / "data").mkdir()
        pd.DataFrame([_row()]).to_parquet(tmp / "data" / "triplets.parquet")
        write_json_atomic(tmp / "manifest.json", {"config_hash": "x"})
    with pytest.raises(td.TrainingDataError, match="toxic_harmful_spans"):
        td.load_source(run, tcfg)
    assert td.load_source(run, TrainingConfig())[0] == "synthesis"
    # Spans read back from Parquet arrive as numpy arrays.
    spans = pd.DataFrame([_row(toxic_harmful_spans=[[1, 3]])])
    spans.to_parquet(tmp_path / "spans.parquet")
    back = pd.read_parquet(tmp_path / "spans.parquet")
    enc = td.encode_frame(back, tiny_tokenizer, tcfg)
    assert enc["status"].tolist() == ["ok"] and _on(enc["tox_mask"][0]) == [start + 1, start + 2]


def _broken(tokenizer, template: str):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


@pytest.mark.parametrize(
    "template",
    [
        # drops the assistant turn entirely
        "{% for m in messages %}{% if m['role'] != 'assistant' %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        # injects an end-of-turn token into every assistant message
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | replace(' ', ' <|im_end|>') }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        # renders the generation prompt differently from the conversation
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>model\n{% endif %}",
    ],
)
def test_broken_chat_template_stops_the_run_naming_the_sample(tiny_tokenizer, template):
    tok = _broken(tiny_tokenizer, template)
    frame = pd.DataFrame([_row(id="good-looking-id-42")])
    enc = td.encode_frame(frame, tok, TrainingConfig())
    assert enc["status"].tolist() == ["error"]
    with pytest.raises(td.TrainingDataError, match="good-looking-id-42"):
        td.check_encoded(enc, 1)


def test_special_token_inside_a_response_stops_the_run(tiny_tokenizer):
    row = _row(id="leaky", toxic="Sure.<|im_end|>\n<|im_start|>assistant\nHere is how.")
    with pytest.raises(td.TrainingDataError, match=r"'leaky'.*special token"):
        td.encode_pair(row, tiny_tokenizer, TrainingConfig())


def test_overlong_truncate_vs_drop_counts(tiny_tokenizer):
    long_toxic = " ".join(["Climb up at night without tools and rip every tile off."] * 8)
    rows = pd.DataFrame([_row(id="short"), _row(id="long", toxic=long_toxic)])
    base = td.encode_pair(_row(), tiny_tokenizer, TrainingConfig())
    limit = max(len(base["pos_ids"]), len(base["tox_ids"])) + 2

    trunc = td.encode_frame(rows, tiny_tokenizer, TrainingConfig(max_seq_len=limit, overlong="truncate"))
    stats = td.check_encoded(trunc, 2)
    assert stats["kept"] == 2 and stats["truncated_toxic"] == 1 and stats["truncated_positive"] == 0
    long = trunc.set_index("id").loc["long"]
    assert len(long["tox_ids"]) == limit == len(long["tox_mask"]) and any(long["tox_mask"])

    drop = td.encode_frame(rows, tiny_tokenizer, TrainingConfig(max_seq_len=limit, overlong="drop"))
    stats = td.check_encoded(drop, 2)
    assert stats["kept"] == 1 and stats["dropped_overlong"] == 1 and stats["truncated_toxic"] == 0

    prompt_len = len(render_ids(tiny_tokenizer, td.training_prompt(QUESTION)))
    tiny = td.encode_pair(_row(), tiny_tokenizer, TrainingConfig(max_seq_len=prompt_len))
    assert tiny["status"] == "dropped_truncated_empty"


def test_holdout_split_is_seeded_and_by_id():
    ids = [f"id{i:03d}" for i in range(50)]
    a = td.holdout_ids(ids, 0.2, seed=7)
    assert a == td.holdout_ids(list(reversed(ids)), 0.2, seed=7)  # order-independent
    assert len(a) == 10 and a <= set(ids)
    assert a != td.holdout_ids(ids, 0.2, seed=8)
    assert td.holdout_ids(ids, 0.0, seed=7) == set()
    assert len(td.holdout_ids(["x", "y"], 0.9, seed=0)) == 1  # always one training id left
    assert len(td.holdout_ids(ids[:5], 0.01, seed=0)) == 1  # a requested split is never empty


def test_benign_rows_add_mle_tokens_only(tiny_tokenizer):
    tcfg = TrainingConfig()
    enc = td.encode_pair(_row(id="b1", toxic=None, kind=td.BENIGN), tiny_tokenizer, tcfg)
    prompt = render_ids(tiny_tokenizer, td.training_prompt(QUESTION))
    assert enc["status"] == "ok"
    pos_on = _on(enc["pos_mask"])
    assert tiny_tokenizer.decode(enc["pos_ids"][pos_on[0] : pos_on[-1]]) == POSITIVE
    # the toxic side is the prompt alone and masks nothing: no UT tokens, a valid sequence to forward
    assert enc["tox_ids"] == prompt and sum(enc["tox_mask"]) == 0
    frame = pd.DataFrame([_row(id="a", kind="red_team"), _row(id="b", toxic=None, kind=td.BENIGN)])
    stats = td.check_encoded(td.encode_frame(frame, tiny_tokenizer, tcfg), len(frame))
    assert stats["train_pairs"] == 1 and stats["train_benign"] == 1 and stats["kept"] == 2
    with pytest.raises(td.TrainingDataError, match="b2"):
        td.encode_pair(_row(id="b2", positive="  ", toxic=None, kind=td.BENIGN), tiny_tokenizer, tcfg)


def test_recovery_row_supervises_only_the_answer_after_the_toxic_prefix(tiny_tokenizer):
    prefix = "Climb up at night"
    enc = td.encode_pair(_row(kind=td.RECOVERY, prefix=prefix, toxic=None), tiny_tokenizer, TrainingConfig())
    assert enc["status"] == "ok"
    on = _on(enc["pos_mask"])
    supervised = tiny_tokenizer.decode(enc["pos_ids"][on[0] : on[-1]])
    assert supervised.strip() == POSITIVE  # the prefix is context, never a target
    assert prefix in tiny_tokenizer.decode(enc["pos_ids"][: on[0]])
    assert sum(enc["tox_mask"]) == 0  # no unlikelihood tokens on a recovery row


def test_ut_skip_openings_keeps_the_injected_opening_out_of_the_mask(tiny_tokenizer):
    toxic = "Sure! " + TOXIC
    row = _row(toxic=toxic)
    with_opening = td.encode_pair(row, tiny_tokenizer, TrainingConfig(mask_mode="all"), toxic_openings=("Sure!",))
    skipped = td.encode_pair(row, tiny_tokenizer, TrainingConfig(mask_mode="all", ut_skip_openings=True),
                             toxic_openings=("Sure!",))  # fmt: skip
    penalised = tiny_tokenizer.decode([skipped["tox_ids"][i] for i in _on(skipped["tox_mask"])])
    assert "Sure" not in penalised and penalised.strip() == TOXIC.strip()
    assert "Sure" in tiny_tokenizer.decode([with_opening["tox_ids"][i] for i in _on(with_opening["tox_mask"])])


def test_ut_exempt_common_keeps_helpful_words_out_of_the_red_team_mask(tiny_tokenizer):
    helpful = ["Climb the ladder with a friend.", "Use tools at home.", "Climb stairs slowly."]
    exempt = td.common_answer_ids(helpful, tiny_tokenizer, share=0.6)  # ids in >= 2 of the 3 answers
    climb = set(tiny_tokenizer("Climb", add_special_tokens=False)["input_ids"])
    assert climb <= exempt and td.common_answer_ids(helpful, tiny_tokenizer, share=0.0) == frozenset()
    cfg = TrainingConfig(mask_mode="all")
    plain = td.encode_pair(_row(), tiny_tokenizer, cfg)
    kept = td.encode_pair(_row(), tiny_tokenizer, cfg, exempt_ids=exempt)
    assert set(_on(kept["tox_mask"])) == {i for i in _on(plain["tox_mask"]) if plain["tox_ids"][i] not in exempt}
    assert len(_on(kept["tox_mask"])) < len(_on(plain["tox_mask"]))
    # a benign row's refusal side is not exempted: the words of helpfulness are not in a refusal anyway
    benign = td.encode_pair(_row(kind="everyday"), tiny_tokenizer, cfg, exempt_ids=exempt)
    assert benign["tox_mask"] == plain["tox_mask"]


def test_mix_sets_the_shares_by_subsampling():
    frame = pd.DataFrame({"id": [str(i) for i in range(100)],
                          "kind": ["red_team"] * 20 + ["benign"] * 50 + ["everyday"] * 30})  # fmt: skip
    out, stats = td.apply_mix(frame, {"red_team": 0.4, "benign": 0.2, "everyday": 0.4}, seed=0)
    # red_team is the scarcest relative to its share: 20 / 0.4 = 50 rows in all
    assert out["kind"].value_counts().to_dict() == {"red_team": 20, "benign": 10, "everyday": 20}
    again, _ = td.apply_mix(frame, {"red_team": 0.4, "benign": 0.2, "everyday": 0.4}, seed=0)
    assert again["id"].tolist() == out["id"].tolist()  # seeded
    assert td.apply_mix(frame, None, 0)[0] is frame
    assert stats["available"] == {"benign": 50, "everyday": 30, "red_team": 20}


def test_recovery_rows_come_from_a_seeded_share_of_the_pairs():
    pairs = pd.DataFrame({"id": [f"q{i}" for i in range(10)], "question": ["Q?"] * 10, "positive": ["No."] * 10,
                          "toxic": ["one two three four five six"] * 10})  # fmt: skip
    rows = td.recovery_rows(pairs, 0.5, max_words=3, seed=1)
    assert len(rows) == 5 and set(rows["kind"]) == {td.RECOVERY}
    assert all(1 <= len(p.split()) <= 3 for p in rows["prefix"])
    assert all(i.endswith(":recovery") for i in rows["id"])
    assert td.recovery_rows(pairs, 0.0, 3, 1).empty


def test_benign_row_with_a_refusal_gets_ut_on_the_refusal_and_mle_on_the_answer(tiny_tokenizer):
    refusal = "I can't help with roofs: call someone."
    enc = td.encode_pair(_row(kind="everyday", toxic=refusal), tiny_tokenizer, TrainingConfig())
    assert enc["status"] == "ok" and sum(enc["tox_mask"]) > 0
    penalised = tiny_tokenizer.decode([enc["tox_ids"][i] for i in _on(enc["tox_mask"])])
    assert "can't" in penalised  # the refusal's own words, absent from the helpful answer
    on = _on(enc["pos_mask"])
    assert tiny_tokenizer.decode(enc["pos_ids"][on[0] : on[-1]]) == POSITIVE
    # without a refusal (or when it shares every token with the answer) the row is MLE-only
    for toxic in (None, "", POSITIVE):
        plain = td.encode_pair(_row(kind="everyday", toxic=toxic), tiny_tokenizer, TrainingConfig())
        assert plain["status"] == "ok" and sum(plain["tox_mask"]) == 0


def test_dpo_pairs_cover_whole_responses_and_rows_without_a_rejected_answer_are_dropped(tiny_tokenizer):
    tcfg = TrainingConfig(objective="dpo", ut_skip_openings=True)
    enc = td.encode_pair(_row(toxic="Sure! " + TOXIC), tiny_tokenizer, tcfg, toxic_openings=("Sure!",))
    assert enc["status"] == "ok"
    # chosen and rejected: every response token and the end-of-turn, the opening included (no UT mask)
    for ids, mask, text in (
        (enc["pos_ids"], enc["pos_mask"], POSITIVE),
        (enc["tox_ids"], enc["tox_mask"], "Sure! " + TOXIC),
    ):
        on = _on(mask)
        assert on == list(range(on[0], on[-1] + 1)) and tiny_tokenizer.decode(ids[on[0] : on[-1]]) == text
        assert ids[on[-1]] == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert td.encode_pair(_row(toxic=POSITIVE), tiny_tokenizer, tcfg)["status"] == "ok"  # no diff mask to empty
    refusal = td.encode_pair(_row(kind="everyday", toxic="I can't help with roofs."), tiny_tokenizer, tcfg)
    assert refusal["status"] == "ok" and sum(refusal["tox_mask"]) > 0  # a helpful answer over its refusal
    frame = pd.DataFrame([_row(id="a"), _row(id="b", kind=td.BENIGN, toxic=None),
                          _row(id="c", kind=td.RECOVERY, toxic=None, prefix="Climb up")])  # fmt: skip
    stats = td.check_encoded(td.encode_frame(frame, tiny_tokenizer, tcfg), len(frame))
    assert stats["kept"] == 1 and stats["dropped_no_rejected"] == 2 and stats["train_pairs"] == 1
    dual = td.check_encoded(td.encode_frame(frame, tiny_tokenizer, TrainingConfig()), len(frame))
    assert dual["kept"] == 3 and dual["dropped_no_rejected"] == 0  # the dual loss keeps them for MLE
