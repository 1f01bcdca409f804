"""Protection of the serving app without Ray: auth, limits, body size, deadlines, key loading."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from ptalign_ray.config import ConfigError, JudgeConfig, ServingConfig, parse_config
from ptalign_ray.http_body import HttpError
from ptalign_ray.serving.protection import (
    ApiKeyError,
    Limits,
    ProtectionMiddleware,
    check_bearer,
    check_generation_request,
    key_digest,
    load_api_key,
    stream_with_deadline,
)

LIMITS = Limits(
    max_body_bytes=2000,
    max_prompt_chars=100,
    max_tokens=64,
    max_n=2,
    body_limits={"/v1/judge": (5000, "judge.max_items")},
)
CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hello"}]


def test_bearer_check():
    digest = key_digest("s3cret")
    check_bearer(None, None)  # auth off
    check_bearer("Bearer s3cret", digest)
    check_bearer("bearer  s3cret ", digest)
    for header, needle in [(None, "missing"), ("s3cret", "malformed"), ("Basic s3cret", "malformed"),
                           ("Bearer ", "malformed"), ("Bearer wrong", "invalid API key")]:  # fmt: skip
        with pytest.raises(HttpError, match=needle) as err:
            check_bearer(header, digest)
        assert err.value.status == 401


def test_api_key_from_env_or_file(tmp_path):
    assert load_api_key(ServingConfig()) is None
    cfg = ServingConfig(api_key_env="MY_KEY")
    assert load_api_key(cfg, env={"MY_KEY": " k1 \n"}) == "k1"
    with pytest.raises(ApiKeyError, match=r"\$MY_KEY"):
        load_api_key(cfg, env={})
    with pytest.raises(ApiKeyError, match="unset or empty"):
        load_api_key(cfg, env={"MY_KEY": "  "})
    f = tmp_path / "key"
    f.write_text("k2\nignored\n")
    assert load_api_key(ServingConfig(api_key_file=str(f))) == "k2"
    with pytest.raises(ApiKeyError, match="cannot be read"):
        load_api_key(ServingConfig(api_key_file=str(tmp_path / "nope")))
    (tmp_path / "empty").write_text("")
    with pytest.raises(ApiKeyError, match="empty"):
        load_api_key(ServingConfig(api_key_file=str(tmp_path / "empty")))
    # the standalone judge: same rule, its own settings named in the message
    assert load_api_key(JudgeConfig(api_key_env="J"), env={"J": "k3"}, name="judge") == "k3"
    with pytest.raises(ApiKeyError, match=r"judge.api_key_env names \$J"):
        load_api_key(JudgeConfig(api_key_env="J"), env={}, name="judge")


def test_judge_config_needs_a_key_beyond_loopback_like_serving():
    with pytest.raises(ConfigError, match="judge.*beyond loopback.*judge.api_key_env"):
        parse_config({"judge": {"host": "0.0.0.0"}})
    assert parse_config({"judge": {"host": "0.0.0.0", "api_key_env": "K"}}).judge.host == "0.0.0.0"
    assert parse_config({"judge": {"host": "0.0.0.0", "allow_unauthenticated_remote": True}})
    with pytest.raises(ConfigError, match="not both"):
        parse_config({"judge": {"api_key_env": "K", "api_key_file": "f"}})


def test_which_key_is_used_does_not_change_the_refinement_hash():
    sections = ("model", "judge", "refinement", "seed")
    plain = parse_config({}).section_hash(*sections)
    assert parse_config({"judge": {"api_key_env": "K"}}).section_hash(*sections) == plain
    assert parse_config({"judge": {"max_items": 7}}).section_hash(*sections) != plain


def test_serving_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="serving.*beyond loopback.*api_key_env"):
        parse_config({"serving": {"host": "0.0.0.0"}})
    assert parse_config({"serving": {"host": "0.0.0.0", "api_key_env": "K"}}).serving.host == "0.0.0.0"
    assert parse_config({"serving": {"host": "0.0.0.0", "allow_unauthenticated_remote": True}})
    with pytest.raises(ConfigError, match="not both"):
        parse_config({"serving": {"api_key_env": "K", "api_key_file": "f"}})
    with pytest.raises(ConfigError, match="serving.models.*more than once"):
        parse_config({"serving": {"models": ["ptalign", "ptalign"]}})
    with pytest.raises(ConfigError, match="serving.models"):
        parse_config({"serving": {"models": []}})
    with pytest.raises(ConfigError, match="serving.mode"):
        parse_config({"serving": {"mode": "fast"}})
    with pytest.raises(ConfigError, match="serving.base_model_name"):
        parse_config({"serving": {"base_model_name": "ptalign"}})
    with pytest.raises(ConfigError, match="serving.*min_replicas"):
        parse_config({"serving": {"min_replicas": 3, "max_replicas": 2}})


@pytest.mark.parametrize(
    "path, body, needle",
    [
        (CHAT, [1], "JSON object"),
        (CHAT, {}, "messages"),
        (CHAT, {"messages": []}, "messages"),
        (CHAT, {"messages": MSG, "max_tokens": 65}, "max_tokens=65"),
        (CHAT, {"messages": MSG, "max_completion_tokens": 0}, "at least 1"),
        (CHAT, {"messages": MSG, "max_tokens": True}, "integer"),
        (CHAT, {"messages": MSG, "n": 3}, "n=3"),
        (CHAT, {"messages": MSG, "best_of": 5}, "best_of=5"),
        (CHAT, {"messages": [{"role": "user", "content": "x" * 101}]}, "101 characters"),
        (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 60}] * 2}]}, "120 characters"),
        ("/v1/completions", {"max_tokens": 8}, "prompt is required"),
        ("/v1/completions", {"prompt": ["x" * 60, "y" * 60]}, "120 characters"),
        ("/v1/completions", {"prompt": list(range(101))}, "101 characters"),
    ],
)
def test_generation_limits(path, body, needle):
    with pytest.raises(HttpError, match=needle) as err:
        check_generation_request(path, body, LIMITS)
    assert err.value.status == 400


def test_generation_limits_accept_valid_bodies():
    check_generation_request(CHAT, {"messages": MSG, "max_tokens": 64, "n": 2}, LIMITS)
    check_generation_request(CHAT, {"messages": MSG}, LIMITS)
    check_generation_request("/v1/completions", {"prompt": "x" * 100, "max_tokens": None}, LIMITS)


def _client(digest="default"):
    async def echo(request: Request):
        return JSONResponse({"body": (await request.body()).decode(), "path": request.url.path})

    routes = [
        Route(p, echo, methods=["GET", "POST"])
        for p in (CHAT, "/v1/completions", "/v1/judge", "/v1/models", "/healthz")
    ]
    app = Starlette(routes=routes)
    app.add_middleware(ProtectionMiddleware, digest=key_digest("k") if digest == "default" else digest, limits=LIMITS)
    return TestClient(app)


def test_middleware_auth_runs_before_the_body_is_read():
    c = _client()
    assert c.get("/healthz").status_code == 200  # health stays open
    r = c.post(CHAT, content=b"{not json")  # no key: 401, not a JSON error
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    assert c.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200


def test_middleware_replays_the_body_and_checks_limits():
    c = _client(digest=None)
    body = json.dumps({"messages": MSG, "max_tokens": 8})
    r = c.post(CHAT, content=body)
    assert r.status_code == 200 and r.json()["body"] == body
    r = c.post(CHAT, content=json.dumps({"messages": MSG, "max_tokens": 100}))
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert c.post(CHAT, content=b"").status_code == 400
    assert "not valid JSON" in c.post(CHAT, content=b"{x").json()["error"]["message"]
    # The judge has its own (larger) body limit and its own schema checks downstream.
    assert c.post("/v1/judge", content=b"j" * 4000).status_code == 200


def test_middleware_body_size_declared_and_streamed():
    c = _client(digest=None)
    r = c.post(CHAT, content=b"x" * 2001)
    assert r.status_code == 413 and "2001 bytes" in r.json()["error"]["message"]
    assert "serving.max_body_bytes" in r.json()["error"]["message"]
    r = c.post("/v1/judge", content=b"x" * 5001)  # its own limit, named by its own setting
    assert r.status_code == 413 and "judge.max_items" in r.json()["error"]["message"]

    def chunks():  # no content-length: the limit is enforced while reading
        for _ in range(30):
            yield b"x" * 100

    r = c.post(CHAT, content=chunks())
    assert r.status_code == 413 and "over the limit" in r.json()["error"]["message"]


def test_stream_deadline_ends_a_slow_stream_with_an_error_event():
    closed = []

    async def slow():
        try:
            yield "data: 1\n\n"
            await asyncio.sleep(10)
            yield "data: 2\n\n"
        finally:
            closed.append(True)

    async def run():
        loop = asyncio.get_running_loop()
        return [c async for c in stream_with_deadline(slow(), loop.time() + 0.2, 0.2)]

    out = asyncio.run(run())
    assert out[0] == "data: 1\n\n" and out[-1] == "data: [DONE]\n\n"
    err = json.loads(out[1][len("data: ") :])["error"]
    assert err["code"] == 504 and "serving.request_timeout_s" in err["message"]
    assert closed == [True]  # the upstream generation was closed (cancelled)


def test_stream_deadline_passes_a_fast_stream_through():
    async def fast():
        for i in range(3):
            yield f"data: {i}\n\n"

    async def run():
        loop = asyncio.get_running_loop()
        return [c async for c in stream_with_deadline(fast(), loop.time() + 5, 5)]

    assert asyncio.run(run()) == [f"data: {i}\n\n" for i in range(3)]


class _FakeStream:
    """A Serve DeploymentResponseGenerator stand-in: yields chunks slowly, records cancel()."""

    def __init__(self, n: int, delay: float):
        self.n, self.delay, self.cancelled = n, delay, False

    def __aiter__(self):
        return self._chunks()

    async def _chunks(self):
        for i in range(self.n):
            await asyncio.sleep(self.delay)
            yield i

    def cancel(self):
        self.cancelled = True


class _FakeHandle:
    def __init__(self, stream):
        self.stream = stream

    def options(self, **kwargs):
        return self

    @property
    def chat(self):
        return type("M", (), {"remote": lambda _self, *a: self.stream})()


def test_engine_request_is_cancelled_when_the_ingress_stops_reading():
    from ptalign_ray.serving.app import _CancellingHandle

    async def read_all(handle):
        return [c async for c in handle.options(stream=True).chat.remote("body")]

    done = _FakeStream(3, 0.0)
    assert asyncio.run(read_all(_CancellingHandle(_FakeHandle(done)))) == [0, 1, 2] and not done.cancelled

    slow = _FakeStream(100, 0.05)  # the deadline hits while the engine is still generating

    async def with_deadline():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await read_all(_CancellingHandle(_FakeHandle(slow)))

    asyncio.run(with_deadline())
    assert slow.cancelled

    early = _FakeStream(100, 0.0)  # a stream closed early (stream_with_deadline, client gone)

    async def close_early():
        it = _CancellingHandle(_FakeHandle(early)).chat.remote("body")
        assert await it.__anext__() == 0
        await it.aclose()

    asyncio.run(close_early())
    assert early.cancelled


def test_a_request_model_that_crashes_is_a_400_naming_the_field():
    from pydantic import BaseModel, model_validator

    from ptalign_ray.serving.protection import check_schema

    class Request(BaseModel):  # like vLLM's: a "before" validator that assumes an object
        prompt: str
        options: dict | None = None

        @model_validator(mode="before")
        @classmethod
        def _count(cls, data):
            if data.get("options") is not None:
                data["options"].get("json")
            return data

    check_schema(Request.model_validate, {"prompt": "hi", "options": {"json": 1}})
    check_schema(Request.model_validate, {"prompt": 3})  # a plain validation error: the route's own 400
    with pytest.raises(HttpError, match="options has a value of the wrong type") as err:
        check_schema(Request.model_validate, {"prompt": "hi", "options": True})
    assert err.value.status == 400 and err.value.param == "options"
