"""Both HTTP apps without Ray: the standalone judge behind the serving app's protection (auth, body
limit, error shape), /v1/judge's request schema in /openapi.json, no wildcard CORS."""

from __future__ import annotations

from unittest import mock

import pytest
from starlette.testclient import TestClient

from ptalign_ray.config import JudgeConfig, parse_config
from ptalign_ray.judging.app import judge_api, max_body_bytes
from ptalign_ray.serving.protection import key_digest

CFG = JudgeConfig(max_items=4, max_text_chars=100)
AUTH = {"Authorization": "Bearer k"}
ITEM = {"prompt": "How do I bake bread?", "response": "Knead, rise, bake."}


class FakeJudge:
    """Stands in for JudgeCore (its backend is tested elsewhere): what matters here is the HTTP layer."""

    def healthz(self):
        return {"status": "ok", "backend": "fake"}

    async def judge_items(self, items):
        return {"verdicts": [{"harmful": False} for _ in items], "backend": "fake"}


@pytest.fixture
def judge():
    return TestClient(judge_api(FakeJudge(), CFG, key_digest("k")))


def test_judge_auth_is_the_serving_rule(judge):
    assert judge.get("/healthz").status_code == 200  # open for load balancers
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k"}):
        r = judge.post("/v1/judge", json={"items": [ITEM]}, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"
    r = judge.post("/v1/judge", json={"items": [ITEM]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["verdicts"] == [{"harmful": False}]


def test_judge_body_limit_and_error_shape(judge):
    r = judge.post("/v1/judge", content=b"x" * (max_body_bytes(CFG) + 1), headers=AUTH)
    assert r.status_code == 413 and "judge.max_items x judge.max_text_chars" in r.json()["error"]["message"]
    r = judge.post("/v1/judge", content=b"{nope", headers=AUTH)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = judge.post("/v1/judge", json={"items": [ITEM] * 5}, headers=AUTH)
    assert r.status_code == 422 and "judge.max_items" in r.json()["error"]["message"]


def test_judge_without_a_key_is_open():
    c = TestClient(judge_api(FakeJudge(), CFG, None))
    assert c.post("/v1/judge", json={"items": [ITEM]}).status_code == 200


def _judge_body_schema(spec: dict) -> dict:
    return spec["paths"]["/v1/judge"]["post"]["requestBody"]["content"]["application/json"]["schema"]


def test_judge_request_schema_is_in_openapi(judge):
    assert judge.get("/openapi.json").status_code == 401  # behind the key like every route but health
    schema = _judge_body_schema(judge.get("/openapi.json", headers=AUTH).json())
    items = schema["properties"]["items"]
    assert schema["required"] == ["items"] and items["maxItems"] == 4 and items["minItems"] == 1
    assert items["items"]["properties"]["prompt"]["maxLength"] == 100
    assert "$ref" not in str(schema)  # self-contained: usable by client generators and fuzzers


def _serving_app(api_key=None, **serving):
    """The serving ingress's FastAPI app as build_app wires it (no Ray needed to build it)."""
    from ray.serve.llm.ingress import make_fastapi_ingress

    from ptalign_ray.serving import app as serving_app

    cfg = parse_config({"serving": serving})
    built = {}

    def fake_make(cls, endpoint_map, app):
        built["app"] = app
        return make_fastapi_ingress(cls, endpoint_map=endpoint_map, app=app)

    with (
        mock.patch.object(serving_app, "make_fastapi_ingress", fake_make),
        mock.patch.object(serving_app, "plan_serving"),
        mock.patch.object(serving_app, "build_llm_configs", return_value=[]),
        mock.patch("ptalign_ray.judging.app.build_judge_worker"),
        mock.patch.object(serving_app.serve, "deployment"),
    ):
        serving_app.build_app(cfg, "unused", model_path="unused", api_key=api_key)
    return built["app"]


def test_serving_openapi_documents_the_judge_body():
    spec = _serving_app().openapi()
    assert _judge_body_schema(spec)["properties"]["items"]["maxItems"] == JudgeConfig().max_items
    assert {"/v1/chat/completions", "/v1/completions", "/v1/judge"} <= set(spec["paths"])


def test_no_wildcard_cors_unless_configured():
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    c = TestClient(_serving_app())
    r = c.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in c.options("/v1/chat/completions", headers=preflight).headers

    c = TestClient(_serving_app("k", cors_allow_origins=["https://app.example"]), raise_server_exceptions=False)
    ok = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    r = c.options("/v1/chat/completions", headers=ok)  # a preflight carries no key: answered before auth
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in c.options("/v1/chat/completions", headers=preflight).headers
    r = c.post("/v1/chat/completions", json={}, headers={"Origin": "https://app.example"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example"
