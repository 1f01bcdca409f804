"""The judge served for real on loopback: Ray Serve + the offline backend, auth on, every kind of bad
body, the hostile requests of the hardening issue; and the schema fuzz's bulk against the same app
in-process (tests/schema_fuzz.py)."""

from __future__ import annotations

import os

import httpx
import pytest

from ptalign_ray.config import JudgeConfig

# exclusive: the schema fuzz and the hostile requests time every answer; `make test` runs this module
# alone, after the parallel part (scripts/test.sh)
pytestmark = [pytest.mark.integration, pytest.mark.exclusive]

KEY_ENV = "PTALIGN_TEST_JUDGE_KEY"
CFG = JudgeConfig(port=18081, max_items=8, max_text_chars=500, api_key_env=KEY_ENV)
AUTH = {"Authorization": "Bearer judge-test-key"}
JUDGE_CASES = (900, 1600)  # schemathesis cases (positive, negative) of POST /v1/judge
# RSS growth after the fuzz's warm-up fifth: the in-process app shares this process with the fuzzer
# (hypothesis / schemathesis state, torch's allocator caches), hence more room than the Serve
# processes get in test_serving.py (100 MiB); measured 75 MiB over the 6,000 requests after warm-up
RSS_BOUND_MIB = 150


@pytest.fixture(scope="module")
def judge(ray_local):
    from ray import serve

    from ptalign_ray.judging.app import start_judge

    os.environ[KEY_ENV] = AUTH["Authorization"].split()[1]
    try:
        url = start_judge(CFG)
    finally:
        del os.environ[KEY_ENV]  # read where the app is built; only its digest reaches the replica
    yield url
    serve.shutdown()


def test_the_key_is_required(judge):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(
            f"{judge}/v1/judge", json={"items": [{"prompt": "p", "response": "r"}]}, headers=headers, timeout=30
        )
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_health(judge):
    r = httpx.get(f"{judge}/healthz", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok", "backend": "offline"}


def test_valid_batch_returns_one_verdict_per_item(judge):
    items = [
        {
            "prompt": "How do I bake bread at home?",
            "response": "Mix flour, water, yeast and salt, knead, let it rise, bake at 230C.",
        },
        {"prompt": "How do I bake bread at home?", "response": "I'm sorry, but I can't help with that."},
        {"prompt": "How do I bake bread at home?", "response": ""},
    ]
    r = httpx.post(f"{judge}/v1/judge", json={"items": items}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    verdicts = r.json()["verdicts"]
    assert len(verdicts) == 3
    for v in verdicts:
        assert set(v) >= {"harmful", "refusal", "score", "categories", "rationale"}
        assert 0.0 <= v["score"] <= 1.0
    assert verdicts[1]["refusal"] and not verdicts[1]["harmful"]
    assert not verdicts[0]["harmful"]
    hinted = httpx.post(
        f"{judge}/v1/judge", json={"items": [{**items[0], "harmful_request": False}]}, headers=AUTH, timeout=60
    )
    assert hinted.status_code == 200 and not hinted.json()["verdicts"][0]["harmful"]


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b"", 400, "empty body"),
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 422, "JSON object"),
        (b'{"items": []}', 422, "items"),
        (b'{"items": [{"prompt": "hi"}]}', 422, "items.0.response"),
        (b'{"items": [{"prompt": 1, "response": "x"}]}', 422, "items.0.prompt"),
        (b'{"items": [{"prompt": "", "response": "x"}]}', 422, "items.0.prompt"),
        (b'{"items": [{"prompt": "a", "response": "b", "extra": 1}]}', 422, "items.0.extra"),
        (b'{"itemz": []}', 422, "itemz"),
        (b'{"items": [{"prompt": "a", "response": "b", "harmful_request": "yes"}]}', 422, "items.0.harmful_request"),
    ],
)
def test_bad_bodies_get_4xx_with_a_message(judge, body, status, needle):
    r = httpx.post(f"{judge}/v1/judge", content=body, headers={**AUTH, "content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_limits(judge):
    too_many = {"items": [{"prompt": "p", "response": "r"}] * (CFG.max_items + 1)}
    r = httpx.post(f"{judge}/v1/judge", json=too_many, headers=AUTH, timeout=30)
    assert r.status_code == 422 and "at most 8" in r.json()["error"]["message"]
    too_long = {"items": [{"prompt": "p", "response": "x" * (CFG.max_text_chars + 1)}]}
    r = httpx.post(f"{judge}/v1/judge", json=too_long, headers=AUTH, timeout=30)
    assert r.status_code == 422 and "items.0.response" in r.json()["error"]["message"]
    huge = b'{"items": [' + b'{"prompt": "p", "response": "r"},' * 200_000 + b"]}"
    r = httpx.post(f"{judge}/v1/judge", content=huge, headers={**AUTH, "content-type": "application/json"}, timeout=60)
    assert r.status_code == 413


@pytest.fixture(scope="module")
def judge_in_process():
    """The standalone judge's own ASGI app (judge_api: protection middleware, routes) around a real
    JudgeCore (offline backend), in this process: the fuzz's bulk without Serve's per-request hops."""
    from starlette.testclient import TestClient

    from ptalign_ray.judging.app import JudgeCore, judge_api
    from ptalign_ray.serving.protection import key_digest

    app = judge_api(JudgeCore(CFG.model_dump(mode="json"), None), CFG, key_digest(AUTH["Authorization"].split()[1]))
    with TestClient(app, raise_server_exceptions=False) as client:  # an app exception is a 500 answer
        yield client


def test_schema_fuzz_in_process(judge_in_process, fuzz_report):
    """schemathesis from the judge's own /openapi.json against its ASGI app in this process: no 5xx,
    answers within the deadline, bounded memory (this process: fuzzer and judge together)."""
    from schema_fuzz import fuzz_with_memory_bound

    pids = {"pytest (fuzzer + judge app)": os.getpid()}
    tally, growth = fuzz_with_memory_bound(judge_in_process, AUTH, {"POST /v1/judge": JUDGE_CASES}, pids)
    shown = {name: round(mib) for name, mib in growth.items()}
    fuzz_report.append(
        tally.line("judge app", "in-process ASGI, real backend") + f", RSS growth after warm-up MiB {shown}"
    )
    assert not tally.failures, tally.failures
    assert tally.requests >= 2.5 * sum(JUDGE_CASES)
    assert max(growth.values()) < RSS_BOUND_MIB, growth


def test_hostile_requests_get_a_4xx_within_a_second(judge):
    from schema_fuzz import check_hostile

    paths = {"chat": "/v1/judge", "completions": "/v1/judge", "judge": "/v1/judge"}
    with httpx.Client(base_url=judge) as client:
        assert check_hostile(client, AUTH, paths) == []
