"""The safety judge as a Ray Serve application: POST /v1/judge, GET /healthz.

Started by `ptalign refine` for refinement, or on its own with `serve run serve_configs/judge-cpu.yaml`.
It sits behind the serving app's ProtectionMiddleware (the same auth rule, body reader and error
shape): missing / wrong key -> 401 when judge.api_key_env / api_key_file is set, too large -> 413.
Every malformed body gets a 4xx with a message that says what to fix (never a 500 or a hang):
invalid JSON -> 400, wrong schema / empty / too many items / over-long text -> 422.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ptalign_ray.config import EngineConfig, JudgeConfig, format_validation_error
from ptalign_ray.http_body import HttpError, parse_json_body
from ptalign_ray.seeds import Seeds, load_seeds

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


def max_body_bytes(cfg: JudgeConfig) -> int:
    # Room for every item at the text limit (4 bytes per char worst case for UTF-8 / escapes) + JSON.
    return cfg.max_items * (2 * cfg.max_text_chars * 4 + 64) + 1024


BODY_SETTING = "judge.max_items x judge.max_text_chars"


def _inline_refs(schema: dict) -> dict:
    """The JSON schema with its $defs inlined: OpenAPI documents keep schemas under components, so a
    pydantic ``#/$defs/..`` reference inside a route's openapi_extra would not resolve."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def judge_route_options(cfg: JudgeConfig) -> dict[str, Any]:
    """FastAPI route options of POST /v1/judge: its request body in /openapi.json (with the limits of
    this server) so client generators and schema fuzzers can use it. The route reads the raw body
    itself (parse_judge_request: item count before validation, capped messages), so the schema is
    documentation, not a second validator."""
    body = _inline_refs(JudgeRequest.model_json_schema())
    body["properties"]["items"]["maxItems"] = cfg.max_items
    for name in ("prompt", "response"):
        body["properties"]["items"]["items"]["properties"][name]["maxLength"] = cfg.max_text_chars
    error = {"description": "an OpenAI-style error: {'error': {'message', 'type', 'param', 'code'}}"}
    return {
        "openapi_extra": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        },
        "responses": {400: error, 401: error, 413: error, 422: error},
    }


def parse_judge_request(body: bytes, cfg: JudgeConfig) -> list[dict]:
    """Validates a raw request body (its size was checked by ProtectionMiddleware); raises
    HttpError(status, message) saying what to fix."""
    data = parse_json_body(body, 'JSON like {"items": [{"prompt": "...", "response": "..."}]}')
    if not isinstance(data, dict):
        raise HttpError(422, 'body must be a JSON object like {"items": [...]}')
    # the count first: validating (and echoing) a huge list costs memory and time on the event loop
    items = data.get("items")
    if isinstance(items, list) and len(items) > cfg.max_items:
        raise HttpError(422, f"{len(items)} items; at most {cfg.max_items} per request (judge.max_items)")
    try:
        req = JudgeRequest.model_validate(data)
    except ValidationError as err:
        raise HttpError(422, format_validation_error(err, "body", what="request")) from None
    for i, item in enumerate(req.items):
        for field in ("prompt", "response"):
            n = len(getattr(item, field))
            if n > cfg.max_text_chars:
                raise HttpError(422, f"items.{i}.{field} has {n} characters; the limit is {cfg.max_text_chars}")
    return [item.model_dump(exclude_none=True) for item in req.items]


def make_backend(
    cfg: JudgeConfig,
    policy_model_path: Optional[str] = None,
    engine: Optional[EngineConfig] = None,
    seeds: Optional[Seeds] = None,
):
    """The backend named by judge.backend: module ptalign_ray.judging.<backend> and its make_judge()
    (imported lazily: each pulls in heavy libraries). A new backend is one new module. ``seeds``: the
    run's seed annotations (None: the packaged ones), for a backend fitted on them (offline)."""
    import importlib

    module = importlib.import_module(f"ptalign_ray.judging.{cfg.backend}")
    if not hasattr(module, "make_judge"):
        raise ValueError(f"judge.backend {cfg.backend!r}: ptalign_ray/judging/{cfg.backend}.py defines no make_judge()")
    return module.make_judge(cfg, policy_model_path, engine, seeds)


class JudgeCore:
    """The judge replica: one backend, its health and batch judging. Served as it is (called through a
    handle from `ptalign serve`, whose own ingress validates requests) or behind the FastAPI routes of
    the standalone judge app (:func:`build_judge_deployment`)."""

    def __init__(
        self,
        cfg_json: dict,
        model_path: Optional[str],
        engine_json: Optional[dict] = None,
        seeds: Optional[Seeds] = None,
    ):
        self.cfg = JudgeConfig.model_validate(cfg_json)
        engine = EngineConfig.model_validate(engine_json) if engine_json else None
        self.backend = make_backend(self.cfg, model_path, engine, seeds)

    def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "backend": self.cfg.backend}

    async def judge_items(self, items: list[dict]) -> dict[str, Any]:
        import asyncio

        verdicts = await asyncio.to_thread(self.backend.judge, items)
        return {"verdicts": [v.model_dump() for v in verdicts], "backend": self.cfg.backend}


def deployment_options(cfg: JudgeConfig) -> dict[str, Any]:
    """Serve options of every judge deployment the pipeline starts: replicas and resources from config."""
    actor = {"num_cpus": cfg.num_cpus}
    if cfg.num_gpus:
        actor["num_gpus"] = cfg.num_gpus
    return {"name": "SafetyJudge", "num_replicas": cfg.replicas, "ray_actor_options": actor,
            "max_ongoing_requests": cfg.max_ongoing_requests, "max_queued_requests": cfg.max_queued_requests}  # fmt: skip


def judge_api(judge: JudgeCore, cfg: JudgeConfig, digest: Optional[str] = None) -> FastAPI:
    """The standalone judge's HTTP app around one JudgeCore: GET /healthz, POST /v1/judge, behind
    ProtectionMiddleware (auth when ``digest`` is set, the body limit). A plain ASGI app, so tests
    can drive it in-process with a real backend."""
    from ptalign_ray.serving.protection import Limits, ProtectionMiddleware

    api = FastAPI(title="ptalign safety judge")
    limits = Limits(max_body_bytes=max_body_bytes(cfg), body_setting=BODY_SETTING)
    api.add_middleware(ProtectionMiddleware, digest=digest, limits=limits)

    @api.get("/healthz")
    def health() -> dict[str, Any]:
        return judge.healthz()

    @api.post("/v1/judge", **judge_route_options(cfg))
    async def judge_route(request: Request):
        try:
            items = parse_judge_request(await request.body(), cfg)
        except HttpError as err:
            return JSONResponse(err.body(), err.status)
        return await judge.judge_items(items)

    return api


def build_judge_deployment(
    cfg: JudgeConfig,
    policy_model_path: Optional[str] = None,
    engine: Optional[EngineConfig] = None,
    drain_poll_s: Optional[float] = None,
    seeds: Optional[Seeds] = None,
):
    """The standalone judge app: JudgeCore behind :func:`judge_api`. The API key is read here (where
    the app is built) and only its digest travels to the replicas. ``drain_poll_s``: Serve's
    graceful_shutdown_wait_loop_s (default 2 s, waited at least once when a replica stops); ``seeds``:
    see :func:`make_backend` (they travel to the replicas as data, not as a path)."""
    from ray import serve

    from ptalign_ray.serving.protection import key_digest, load_api_key

    digest = key_digest(load_api_key(cfg, name="judge"))
    options = deployment_options(cfg)
    if drain_poll_s is not None:
        options["graceful_shutdown_wait_loop_s"] = drain_poll_s

    @serve.deployment(**options)
    @serve.ingress()
    class SafetyJudge(JudgeCore):
        def __init__(self, cfg_json: dict, model_path: Optional[str], engine_json: Optional[dict], digest, seeds=None):
            super().__init__(cfg_json, model_path, engine_json, seeds)
            self._digest = digest

        def __serve_build_asgi_app__(self):  # called by Serve on the replica, after __init__
            return judge_api(self, self.cfg, self._digest)

    return SafetyJudge.bind(cfg.model_dump(mode="json"), policy_model_path, _engine_json(engine), digest, seeds)


def build_judge_worker(
    cfg: JudgeConfig,
    policy_model_path: Optional[str] = None,
    engine: Optional[EngineConfig] = None,
    seeds: Optional[Seeds] = None,
):
    """JudgeCore as a plain deployment called through a handle, for applications with their own HTTP
    ingress (`ptalign serve`: Serve allows one FastAPI ingress per application). Callers validate
    requests with parse_judge_request first."""
    from ray import serve

    return serve.deployment(JudgeCore, **deployment_options(cfg)).bind(
        cfg.model_dump(mode="json"), policy_model_path, _engine_json(engine), seeds
    )


def _engine_json(engine: Optional[EngineConfig]) -> Optional[dict]:
    return engine.model_dump(mode="json") if engine is not None else None


def start_judge(
    cfg: JudgeConfig,
    policy_model_path: Optional[str] = None,
    engine: Optional[EngineConfig] = None,
    seeds: Optional[Seeds] = None,
) -> str:
    """Starts the judge app on Serve (in the connected Ray) at cfg.host:cfg.port for a caller that removes
    it when done (judge_on_serve); returns its URL."""
    from ray import serve

    from ptalign_ray.ray_runtime import quiet_ray_loggers

    quiet_ray_loggers()  # importing Serve set its logger to INFO
    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s})
    # Removed by its caller once its last request has returned: no 2 s drain wait when it stops (1.5-2.1 s
    # instead of 3.4-3.6 s to remove it, measured).
    app = build_judge_deployment(cfg, policy_model_path, engine, drain_poll_s=0.2, seeds=seeds)
    serve.run(app, name=APP_NAME, route_prefix=ROUTE_PREFIX)
    return judge_url(cfg)


@contextmanager
def judge_on_serve(
    cfg: JudgeConfig,
    policy_model_path: Optional[str] = None,
    engine: Optional[EngineConfig] = None,
    seeds: Optional[Seeds] = None,
) -> Iterator[str]:
    """The judge app on Serve for the block (yields its URL); afterwards removes only what it started.

    serve.shutdown() would end every Serve app on a shared cluster: the judge app is deleted by
    name, and Serve itself (controller, proxy on the judge's port) is shut down only when it was
    not running before and no other app runs on it now (ray_runtime.remove_serve_app).
    """
    from ptalign_ray.ray_runtime import remove_serve_app, serve_is_running

    serve_was_running = serve_is_running()
    try:
        yield start_judge(cfg, policy_model_path, engine, seeds)
    finally:
        remove_serve_app(APP_NAME, serve_was_running)


def judge_url(cfg: JudgeConfig) -> str:
    return f"http://{cfg.host}:{cfg.port}"


def app_builder(args: dict[str, Any]):
    """Entry for `serve run` / `serve deploy` YAMLs: args are JudgeConfig fields (+ optional policy_model,
    and seeds: a seed YAML's path, as the pipeline config's `seeds`)."""
    args = dict(args or {})
    policy_model = args.pop("policy_model", None)
    seeds = args.pop("seeds", None)
    if policy_model:
        from ptalign_ray.models import resolve_model

        policy_model = resolve_model(policy_model)
    return build_judge_deployment(
        JudgeConfig.model_validate(args), policy_model, seeds=load_seeds(seeds) if seeds else None
    )
