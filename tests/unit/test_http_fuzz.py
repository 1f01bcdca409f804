"""Property-based fuzzing of the request checks every HTTP route runs before a model sees a request
(serving middleware limits, chat message shape, the judge's request parser), plus the hostile cases
found on running servers. Property: any body gets a 4xx with a message, or passes; never another
exception (which the app would turn into a 500), and a hostile body is refused within a second."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptalign_ray.config import JudgeConfig
from ptalign_ray.http_body import HttpError, parse_json_body
from ptalign_ray.judging.app import parse_judge_request
from ptalign_ray.serving.protection import COMPLETIONS_PATH, Limits, check_generation_request

CHAT = "/v1/chat/completions"
LIMITS = Limits(max_body_bytes=1_000_000, max_prompt_chars=16_000, max_tokens=1024, max_n=4, max_request_tokens=16_384)
JUDGE = JudgeConfig()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
roles = st.sampled_from(["user", "assistant", "system", "tool", "wizard", "", 3, None])
contents = (
    st.text(max_size=50)
    | st.none()
    | st.integers()
    | st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", 1]), "text": json_values})
        | st.text(max_size=5)
        | json_values,
        max_size=4,
    )
)
messages = (
    st.lists(st.fixed_dictionaries({"role": roles, "content": contents}) | json_values, min_size=0, max_size=4)
    | json_values
)
chat_bodies = st.fixed_dictionaries(
    {"messages": messages},
    optional={"max_tokens": json_values | st.integers(), "n": json_values | st.integers(-2, 10), "model": json_values},
)
completion_bodies = st.fixed_dictionaries(
    {"prompt": json_values | st.lists(st.text(max_size=5), max_size=2000)},
    optional={"max_tokens": st.integers(-5, 5000) | json_values, "n": st.integers(-1, 8), "best_of": json_values},
)
judge_bodies = st.fixed_dictionaries(
    {"items": json_values | st.lists(st.fixed_dictionaries({"prompt": json_values, "response": json_values}))},
    optional={"extra": json_values},
)


def _generation_outcome(path: str, raw: bytes) -> None:
    try:
        data = parse_json_body(raw, "a JSON object")
        check_generation_request(path, data, LIMITS)
    except HttpError as err:
        assert 400 <= err.status < 500 and err.message


def _judge_outcome(raw: bytes) -> None:
    try:
        parse_judge_request(raw, JUDGE)
    except HttpError as err:
        assert 400 <= err.status < 500 and err.message and len(err.message) < 5000


FUZZ = settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(chat_bodies)
def test_chat_bodies_get_4xx_or_pass(body):
    _generation_outcome(CHAT, json.dumps(body).encode())


@FUZZ
@given(completion_bodies)
def test_completion_bodies_get_4xx_or_pass(body):
    _generation_outcome(COMPLETIONS_PATH, json.dumps(body).encode())


@FUZZ
@given(judge_bodies)
def test_judge_bodies_get_4xx_or_pass(body):
    _judge_outcome(json.dumps(body).encode())


@FUZZ
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_bytes_get_4xx_or_pass(raw):
    _generation_outcome(CHAT, raw)
    _generation_outcome(COMPLETIONS_PATH, raw)
    _judge_outcome(raw)


def _refused_fast(fn, *args) -> BaseException:
    t0 = time.perf_counter()
    with pytest.raises(HttpError) as err:
        fn(*args)
    assert time.perf_counter() - t0 < 1.0
    assert 400 <= err.value.status < 500
    return err.value


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b"[" * 100_000, "nested too deeply"),  # was a 500 (maximum recursion depth)
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", "not valid JSON"),  # was a 500 (integer digit limit)
    ],
)
def test_hostile_json_is_a_400(raw, needle):
    err = _refused_fast(parse_json_body, raw, "x")
    assert needle in err.message


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role must be one of"),  # was accepted
        ({"messages": [{"role": "user", "content": ["a", {"x": 1}]}]}, "content[0]"),  # was a 500
        ({"messages": ["hello"]}, "messages[0] must be an object"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "text only"),
    ],
)
def test_malformed_messages_are_a_400(body, needle):
    err = _refused_fast(check_generation_request, CHAT, body, LIMITS)
    assert needle in err.message


def test_completions_work_is_budgeted_not_only_characters():
    # a few KB asking for ~4 M tokens (1,024 prompts x n 4 x 1,024 tokens)
    body = {"prompt": ["a"] * 1024, "n": 4, "max_tokens": 1024}
    assert len(json.dumps(body)) < 10_000
    err = _refused_fast(check_generation_request, COMPLETIONS_PATH, body, LIMITS)
    assert "serving.max_request_tokens" in err.message
    check_generation_request(COMPLETIONS_PATH, {"prompt": ["a"] * 16, "max_tokens": 1024}, LIMITS)  # 16,384: fits
    check_generation_request(COMPLETIONS_PATH, {"prompt": ["a"] * 1024, "max_tokens": 16}, LIMITS)
    with pytest.raises(HttpError):  # no max_tokens: counts max_tokens_limit per answer
        check_generation_request(COMPLETIONS_PATH, {"prompt": ["a"] * 17}, LIMITS)


def test_judge_refuses_a_huge_item_list_fast_with_a_short_message():
    raw = json.dumps({"items": [1] * 100_000}).encode()
    cfg = JudgeConfig(max_items=64)
    err = _refused_fast(parse_judge_request, raw, cfg)
    assert "100000 items" in err.message and len(err.message) < 300


def test_judge_validation_errors_are_capped():
    raw = json.dumps({"items": [{"prompt": i, "response": i} for i in range(60)]}).encode()
    err = _refused_fast(parse_judge_request, raw, JudgeConfig(max_items=64))
    assert "more errors of the same kind" in err.message and len(err.message) < 2000
