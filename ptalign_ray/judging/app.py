"""The safety judge as a Ray Serve application: POST /v1/judge, GET /healthz.

Started by `ptalign refine` for refinement, or on its own with `serve run serve_configs/judge-cpu.yaml`.
Every malformed body gets a 4xx with a message that says what to fix (never a 500 or a hang):
invalid JSON -> 400, too large -> 413, wrong schema / empty / too many items / over-long text -> 422.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ptalign_ray.config import JudgeConfig, format_validation_error
from ptalign_ray.http_body import BodyError, parse_json_body, read_body_limited

APP_NAME = "judge"
ROUTE_PREFIX = "/"


class JudgeItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1)
    response: str
    harmful_request: Optional[bool] = Field(
        None, description="Set when the caller knows the request is harmful (refinement's red-team questions)."
    )


class JudgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[JudgeItem] = Field(min_length=1)


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def max_body_bytes(cfg: JudgeConfig) -> int:
    # Room for every item at the text limit (4 bytes per char worst case for UTF-8 / escapes) + JSON.
    return cfg.max_items * (2 * cfg.max_text_chars * 4 + 64) + 1024


def parse_judge_request(body: bytes, cfg: JudgeConfig) -> list[dict]:
    """Validates a raw request body; raises BadRequest(status, message) saying what to fix."""
    if len(body) > max_body_bytes(cfg):
        raise BadRequest(413, f"request body is {len(body)} bytes; the limit is {max_body_bytes(cfg)}")
    try:
        data = parse_json_body(body, 'JSON like {"items": [{"prompt": "...", "response": "..."}]}')
    except BodyError as err:
        raise BadRequest(err.status, err.message) from None
    if not isinstance(data, dict):
        raise BadRequest(422, 'body must be a JSON object like {"items": [...]}')
    # the count first: validating (and echoing) a huge list costs memory and time on the event loop
    items = data.get("items")
    if isinstance(items, list) and len(items) > cfg.max_items:
        raise BadRequest(422, f"{len(items)} items; at most {cfg.max_items} per request (judge.max_items)")
    try:
        req = JudgeRequest.model_validate(data)
    except ValidationError as err:
        raise BadRequest(422, format_validation_error(err, "body", what="request")) from None
    if len(req.items) > cfg.max_items:
        raise BadRequest(422, f"{len(req.items)} items; at most {cfg.max_items} per request (judge.max_items)")
    for i, item in enumerate(req.items):
        for field in ("prompt", "response"):
            n = len(getattr(item, field))
            if n > cfg.max_text_chars:
                raise BadRequest(422, f"items.{i}.{field} has {n} characters; the limit is {cfg.max_text_chars}")
    return [item.model_dump(exclude_none=True) for item in req.items]


def make_backend(cfg: JudgeConfig, policy_model_path: Optional[str] = None):
    """The judge backend named in the config (imported lazily: each pulls in heavy libraries)."""
    if cfg.backend == "offline":
        from ptalign_ray.judging.offline import OfflineJudge

        return OfflineJudge()
    from ptalign_ray.judging.llm import LLMJudge

    return LLMJudge(cfg, policy_model_path)


def build_judge_deployment(cfg: JudgeConfig, policy_model_path: Optional[str] = None, num_replicas: int = 1):
    """A bound Serve application hosting the judge backend behind FastAPI."""
    from ray import serve

    api = FastAPI(title="ptalign safety judge")

    @serve.deployment(name="SafetyJudge", num_replicas=num_replicas, ray_actor_options={"num_cpus": 1})
    @serve.ingress(api)
    class SafetyJudge:
        def __init__(self, cfg_json: dict, model_path: Optional[str]):
            self.cfg = JudgeConfig.model_validate(cfg_json)
            self.backend = make_backend(self.cfg, model_path)

        @api.get("/healthz")
        def healthz(self) -> dict[str, Any]:
            return {"status": "ok", "backend": self.cfg.backend}

        @api.post("/v1/judge")
        async def judge(self, request: Request):
            try:
                body = await read_body_limited(
                    request, max_body_bytes(self.cfg), "judge.max_items x judge.max_text_chars"
                )
                items = parse_judge_request(body, self.cfg)
            except BodyError as err:
                return JSONResponse({"error": {"message": err.message, "type": "invalid_request"}}, err.status)
            except BadRequest as err:
                return JSONResponse({"error": {"message": err.message, "type": "invalid_request"}}, err.status)
            import asyncio

            verdicts = await asyncio.to_thread(self.backend.judge, items)
            return {"verdicts": [v.model_dump() for v in verdicts], "backend": self.cfg.backend}

    return SafetyJudge.bind(cfg.model_dump(mode="json"), policy_model_path)


def build_judge_worker(cfg: JudgeConfig, policy_model_path: Optional[str] = None, num_replicas: int = 1):
    """The judge backend as a plain deployment called through a handle, for applications that have
    their own HTTP ingress (`ptalign serve`): Serve allows one FastAPI ingress per application.
    Callers validate requests with parse_judge_request first."""
    from ray import serve

    @serve.deployment(name="SafetyJudge", num_replicas=num_replicas, ray_actor_options={"num_cpus": 1})
    class SafetyJudgeWorker:
        def __init__(self, cfg_json: dict, model_path: Optional[str]):
            self.cfg = JudgeConfig.model_validate(cfg_json)
            self.backend = make_backend(self.cfg, model_path)

        def healthz(self) -> dict[str, Any]:
            return {"status": "ok", "backend": self.cfg.backend}

        async def judge_items(self, items: list[dict]) -> dict[str, Any]:
            import asyncio

            verdicts = await asyncio.to_thread(self.backend.judge, items)
            return {"verdicts": [v.model_dump() for v in verdicts], "backend": self.cfg.backend}

    return SafetyJudgeWorker.bind(cfg.model_dump(mode="json"), policy_model_path)


def start_judge(cfg: JudgeConfig, policy_model_path: Optional[str] = None) -> str:
    """Starts the judge app on Serve (in the connected Ray) at cfg.host:cfg.port; returns its URL."""
    from ray import serve

    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s})
    serve.run(build_judge_deployment(cfg, policy_model_path), name=APP_NAME, route_prefix=ROUTE_PREFIX)
    return judge_url(cfg)


@contextmanager
def judge_on_serve(cfg: JudgeConfig, policy_model_path: Optional[str] = None) -> Iterator[str]:
    """The judge app on Serve for the block (yields its URL); afterwards removes only what it started.

    serve.shutdown() would end every Serve app on a shared cluster: the judge app is deleted by
    name, and Serve itself (controller, proxy on the judge's port) is shut down only when it was
    not running before and no other app runs on it now.
    """
    from ray import serve

    before = serve.status()
    serve_was_running = bool(before.proxies or before.applications)
    try:
        yield start_judge(cfg, policy_model_path)
    finally:
        if APP_NAME in serve.status().applications:
            serve.delete(APP_NAME)
        if not serve_was_running and not serve.status().applications:
            serve.shutdown()


def judge_url(cfg: JudgeConfig) -> str:
    return f"http://{cfg.host}:{cfg.port}"


def app_builder(args: dict[str, Any]):
    """Entry for `serve run` / `serve deploy` YAMLs: args are JudgeConfig fields (+ optional policy_model)."""
    args = dict(args or {})
    policy_model = args.pop("policy_model", None)
    if policy_model:
        from ptalign_ray.models import resolve_model

        policy_model = resolve_model(policy_model)
    return build_judge_deployment(JudgeConfig.model_validate(args), policy_model)
