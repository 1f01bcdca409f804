"""The serving application: the aligned model (OpenAI API) and the safety judge on one Ray Serve app.

Composition (the same pieces ``ray.serve.llm.build_openai_app`` wires, plus protection and the judge):

    HTTP 127.0.0.1:8000 -> ProtectionMiddleware (auth, body / prompt / max_tokens / n limits)
      -> PtalignIngress (OpenAiIngress subclass: routes model names, deadlines, /healthz, /readyz,
         /v1/judge)
           -> LLMServer deployments (ray.serve.llm, one vLLM engine each; LLMConfig from engine.py)
           -> SafetyJudge deployment (ptalign_ray.judging.app)

Why not ``build_openai_app`` itself: its ingress is built from a fixed endpoint map on a FastAPI app
it creates internally, so neither a middleware (auth before body parsing, body size) nor the judge
and health routes can be put on it. Why model names are routed here: Ray 2.60's multiplexed LoRA
loading (``lora_config.dynamic_lora_loading_path``) only accepts s3/gs/azure URIs, so adapters are
loaded by vLLM at engine start from the local run directory (static ``lora_modules``) and the
ingress sends ``ptalign`` / ``mle-only`` to the base engine, where vLLM applies them by name.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

from fastapi import Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import StreamingResponse

from ptalign_ray.config import JudgeConfig, PipelineConfig, ServingConfig
from ptalign_ray.http_body import HttpError, error_body
from ptalign_ray.seeds import load_seeds
from ptalign_ray.serving.plan import ServingPlan, plan_serving
from ptalign_ray.serving.protection import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    Limits,
    ProtectionMiddleware,
    key_digest,
    load_api_key,
    timeout_message,
)

APP_NAME = "ptalign"
ROUTE_PREFIX = "/"
JUDGE_PATH = "/v1/judge"
READY_TIMEOUT_S = 5.0


def endpoints(judge_cfg: Optional[JudgeConfig]) -> dict[str, Callable]:
    """The ingress routes (method name -> FastAPI route decorator); /v1/judge documents its body."""
    from ptalign_ray.judging.app import judge_route_options

    judge_options = judge_route_options(judge_cfg) if judge_cfg is not None else {}
    return {
        "models": lambda app: app.get("/v1/models"),
        "model_data": lambda app: app.get("/v1/models/{model:path}"),
        "completions": lambda app: app.post(COMPLETIONS_PATH),
        "chat": lambda app: app.post(CHAT_PATH),
        "healthz": lambda app: app.get("/healthz"),
        "readyz": lambda app: app.get("/readyz"),
        "judge": lambda app: app.post(JUDGE_PATH, **judge_options),
    }


def _fastapi_app():
    """Ray LLM's own app factory: its exception handlers turn validation errors into OpenAI-style
    400s and engine errors into their status codes. Internal API, so imported in one place.

    It also allows CORS from every origin with credentials; without auth that lets any web page a
    user opens call the loopback server and read the answers, so that layer is dropped here and
    build_app adds CORS only for serving.cors_allow_origins.
    """
    # Ray 2.60 has no public app factory: ray.serve.llm.ingress exports only OpenAiIngress, make_fastapi_ingress.
    from ray.llm._internal.serve.core.ingress.ingress import init

    app = init()
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    return app


def _model_card(name: str, kind: str, engine: str, owned_by: str = "ptalign"):
    # Ray 2.60 has no public ModelCard: ray.serve.llm.openai_api_models exports request / response models only.
    from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard

    return ModelCard(
        id=name, object="model", owned_by=owned_by, permission=[], metadata={"kind": kind, "engine": engine}
    )


class _CancellingHandle:
    """An engine handle whose streaming calls cancel the engine request when the ingress stops
    reading it before the end: our deadline (asyncio.timeout, stream_with_deadline) or a client that
    went away. Serve cancels a child request only when its parent request is cancelled; without this
    a timed-out generation kept the engine busy to its last token (measured: requests sent after a
    504 queued behind it)."""

    def __init__(self, handle):
        self._handle = handle

    def options(self, **kwargs) -> "_CancellingHandle":
        return _CancellingHandle(self._handle.options(**kwargs))

    def __getattr__(self, method: str):
        remote = getattr(self._handle, method).remote
        return SimpleNamespace(remote=lambda *args, **kwargs: _cancel_unless_finished(remote(*args, **kwargs)))


async def _cancel_unless_finished(responses):
    finished = False
    try:
        async for response in responses:
            yield response
        finished = True
    finally:  # CancelledError (deadline, disconnect) or GeneratorExit (stream closed early)
        if not finished:
            responses.cancel()


class PtalignIngress(OpenAiIngress):
    """OpenAI routes for the served model names, the judge, health and readiness.

    Model names are resolved here (not by Ray's ``base:adapter`` convention): each public name maps
    to the engine deployment that serves it; the request keeps its ``model`` so vLLM picks the base
    weights or the named LoRA adapter.
    """

    def __init__(
        self,
        llm_deployments: dict,
        model_cards: dict,
        *,
        routes: dict[str, str],
        kinds: dict[str, str],
        default_model: str,
        timeout_s: float,
        judge=None,
        judge_cfg: Optional[dict] = None,
        **kwargs,
    ):
        super().__init__(llm_deployments, model_cards, **kwargs)
        self._routes = dict(routes)
        self._default_model = default_model
        self._timeout_s = float(timeout_s)
        self._cards = {name: _model_card(name, kinds[name], engine) for name, engine in routes.items()}
        self._judge = judge
        self._judge_cfg = JudgeConfig.model_validate(judge_cfg) if judge_cfg else None

    # -- model routing -------------------------------------------------------------------------
    async def _get_model_id(self, model: Optional[str]) -> str:
        return model or self._default_model

    def _get_configured_serve_handle(self, model_id: str):
        if model_id not in self._configured_serve_handles:
            engine = self._routes[model_id]
            handle = self._default_serve_handles[engine].options(stream=True)
            self._configured_serve_handles[model_id] = _CancellingHandle(handle)
        return self._configured_serve_handles[model_id]

    def _unknown_model(self, model: Optional[str]) -> Optional[JSONResponse]:
        name = model or self._default_model
        if name in self._routes:
            return None
        msg = f"model {name!r} is not served here; available: {sorted(self._routes)} (GET /v1/models)"
        return JSONResponse(error_body(404, msg, "model", "not_found_error"), status_code=404)

    async def model(self, model_id: str):
        return self._cards.get(model_id)

    async def models(self):
        # Ray 2.60 has no public ModelList: ray.serve.llm.openai_api_models exports request / response models only.
        from ray.llm._internal.serve.core.configs.openai_api_models import ModelList

        return ModelList(data=list(self._cards.values()))

    # -- generation with a deadline --------------------------------------------------------------
    async def _process_llm_request(self, body, call_method: str, raw_request: Optional[Request] = None):
        from ptalign_ray.serving.protection import stream_with_deadline

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await super()._process_llm_request(body, call_method, raw_request)
        except TimeoutError:
            return JSONResponse(error_body(504, timeout_message(self._timeout_s), type_="timeout"), status_code=504)
        if isinstance(response, StreamingResponse):
            response.body_iterator = stream_with_deadline(response.body_iterator, deadline, self._timeout_s)
        return response

    async def chat(self, body: ChatCompletionRequest, request: Request):
        if (err := self._unknown_model(body.model)) is not None:
            return err
        body.model = body.model or self._default_model
        return await super().chat(body, request)

    async def completions(self, body: CompletionRequest, request: Request):
        if (err := self._unknown_model(body.model)) is not None:
            return err
        body.model = body.model or self._default_model
        return await super().completions(body, request)

    # -- health, readiness, judge ----------------------------------------------------------------
    async def healthz(self) -> dict[str, Any]:
        """Liveness of the HTTP front: no engine call (load balancers poll it)."""
        return {"status": "ok"}

    async def readyz(self):
        """Ready when every engine (and the judge) answers a health check; 503 while one starts."""
        checks: dict[str, Any] = {name: h.check_health.remote() for name, h in self._default_serve_handles.items()}
        if self._judge is not None:
            checks["judge"] = self._judge.healthz.remote()
        status: dict[str, str] = {}
        for name, response in checks.items():
            try:
                await asyncio.wait_for(response, READY_TIMEOUT_S)
                status[name] = "ready"
            except Exception as err:  # noqa: BLE001 - not ready, whatever the reason
                response.cancel()
                status[name] = f"not ready: {type(err).__name__}"
        ready = all(v == "ready" for v in status.values())
        body = {"status": "ready" if ready else "starting", "components": status, "models": sorted(self._routes)}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def judge(self, request: Request):
        from ptalign_ray.judging.app import parse_judge_request

        if self._judge is None:
            return JSONResponse(error_body(404, "the judge is not served here (serving.judge: false)"), status_code=404)
        try:
            items = parse_judge_request(await request.body(), self._judge_cfg)
        except HttpError as err:
            return JSONResponse(err.body(), status_code=err.status)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._judge.judge_items.remote(items)
        except TimeoutError:
            return JSONResponse(error_body(504, timeout_message(self._timeout_s), type_="timeout"), status_code=504)


def _engine_deployment_options(serving: ServingConfig) -> dict[str, Any]:
    return {
        "autoscaling_config": {
            "min_replicas": serving.min_replicas,
            "max_replicas": serving.max_replicas,
            "target_ongoing_requests": serving.target_ongoing_requests,
        },
        "max_ongoing_requests": serving.max_ongoing_requests,
        # Serve restarts a replica whose engine died (LLMServer.check_health raises).
        "health_check_period_s": 10,
        "health_check_timeout_s": 60,
    }


def build_llm_configs(cfg: PipelineConfig, plan: ServingPlan) -> list:
    """One ray.serve.llm LLMConfig per engine of the plan (vLLM arguments decided in engine.py)."""
    from ptalign_ray.engine import serve_llm_config

    return [
        LLMConfig(
            **serve_llm_config(
                e.model_id,
                e.weights,
                cfg.model,
                cfg.engine,
                _engine_deployment_options(cfg.serving),
                adapters=e.adapters,
                default_max_tokens=cfg.serving.max_tokens_limit,
            )
        )
        for e in plan.engines
    ]


def build_app(
    cfg: PipelineConfig,
    run_dir: str | Path,
    model_path: Optional[str] = None,
    mode: Optional[str] = None,
    api_key: Optional[str] = None,
):
    """The bound Serve application and its plan. ``api_key`` overrides serving.api_key_env/file."""
    from ptalign_ray.judging.app import BODY_SETTING, build_judge_worker, max_body_bytes
    from ptalign_ray.models import resolve_model

    model_path = model_path or resolve_model(cfg.model.name_or_path)
    plan = plan_serving(cfg, run_dir, model_path, mode)
    llm_configs = build_llm_configs(cfg, plan)
    digest = key_digest(api_key if api_key is not None else load_api_key(cfg.serving))

    body_limits = {JUDGE_PATH: (max_body_bytes(cfg.judge), BODY_SETTING)} if cfg.serving.judge else {}
    app = _fastapi_app()
    # Added later = further out: runs before Ray's middleware and before FastAPI parses the body.
    validators = {CHAT_PATH: ChatCompletionRequest.model_validate, COMPLETIONS_PATH: CompletionRequest.model_validate}
    limits = Limits.from_config(cfg.serving, body_limits)
    app.add_middleware(ProtectionMiddleware, digest=digest, limits=limits, validators=validators)
    if cfg.serving.cors_allow_origins:  # outermost: answers preflights, and errors carry CORS headers too
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.serving.cors_allow_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    judge_cfg = cfg.judge if cfg.serving.judge else None
    ingress_cls = make_fastapi_ingress(PtalignIngress, endpoint_map=endpoints(judge_cfg), app=app)

    options = PtalignIngress.get_deployment_options(llm_configs)
    options["name"] = "PtalignIngress"
    if cfg.engine.device == "cpu":
        options["ray_actor_options"] = {"num_cpus": 0}  # an asyncio forwarder; logical CPUs are scarce
    judge = build_judge_worker(cfg.judge, model_path, cfg.engine, load_seeds(cfg.seeds)) if cfg.serving.judge else None
    ingress = serve.deployment(ingress_cls, **options).bind(
        llm_deployments={c.model_id: build_llm_deployment(c) for c in llm_configs},
        model_cards={c.model_id: _model_card(c.model_id, "engine", c.model_id) for c in llm_configs},
        routes=plan.routes,
        kinds=plan.kinds,
        default_model=plan.default_model,
        timeout_s=cfg.serving.request_timeout_s,
        judge=judge,
        judge_cfg=cfg.judge.model_dump(mode="json") if judge is not None else None,
    )
    return ingress, plan


def app_builder(args: dict[str, Any]):
    """Entry for `serve run` / `serve deploy` YAMLs (serve_configs/cpu.yaml, gpu.yaml).

    args: ``run_dir`` (required), ``config`` (pipeline YAML; default: built-in defaults), ``mode``,
    and ``overrides``: a mapping merged into the pipeline config (e.g. ``{serving: {models: [...]}}``).
    HTTP host / port come from the YAML's ``http_options``; the API key from serving.api_key_env or
    serving.api_key_file, read where the builder runs.
    """
    from ptalign_ray.config import load_config, merge_overrides, parse_config

    args = dict(args or {})
    unknown = set(args) - {"run_dir", "config", "mode", "overrides"}
    if unknown:
        raise ValueError(f"unknown app args {sorted(unknown)}; expected run_dir, config, mode, overrides")
    if not args.get("run_dir"):
        raise ValueError("app args need run_dir: the run directory whose trained model is served")
    cfg = load_config(args["config"]) if args.get("config") else PipelineConfig()
    if args.get("overrides"):
        cfg = parse_config(merge_overrides(cfg.model_dump(mode="json"), args["overrides"]), "app args overrides")
    app, _ = build_app(cfg, args["run_dir"], mode=args.get("mode"))
    return app


def serving_url(serving: ServingConfig) -> str:
    host = serving.host if serving.host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{serving.port}"


def start_serving(
    cfg: PipelineConfig,
    run_dir: str | Path,
    mode: Optional[str] = None,
    api_key: Optional[str] = None,
    log: Callable[[str], None] = print,
) -> tuple[str, ServingPlan]:
    """Deploys the app on the connected Ray at serving.host:port; returns once every engine is ready."""
    app, plan = build_app(cfg, run_dir, mode=mode, api_key=api_key)
    for line in plan.describe():
        log(f"[serve] {line}")
    serve.start(
        http_options={
            "host": cfg.serving.host,
            "port": cfg.serving.port,
            # Backstop only: the ingress answers 504 at serving.request_timeout_s first.
            "request_timeout_s": cfg.serving.request_timeout_s + 30,
        }
    )
    t0 = time.perf_counter()
    serve.run(app, name=APP_NAME, route_prefix=ROUTE_PREFIX)  # blocks until the engines are up
    log(f"[serve] ready in {time.perf_counter() - t0:.0f}s at {serving_url(cfg.serving)}")
    return serving_url(cfg.serving), plan


def serve_forever(
    cfg: PipelineConfig, run_dir: str | Path, mode: Optional[str] = None, log: Callable[[str], None] = print
) -> int:
    """`ptalign serve`: start, print the routes, keep serving until Ctrl-C / SIGTERM, shut down cleanly."""
    import ray

    from ptalign_ray.ray_runtime import init_ray, remove_serve_app, serve_is_running

    def _terminate(signum, frame):  # SIGTERM (docker stop, systemd) ends like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGTERM)
    serve_was_running = True  # until known: never shut down a Serve this command did not start
    try:
        init_ray(cfg.ray, quiet=True)
        serve_was_running = serve_is_running()
        # after ray.init, which installs its own SIGTERM handler (a stack dump, no clean shutdown)
        signal.signal(signal.SIGTERM, _terminate)
        url, plan = start_serving(cfg, run_dir, mode=mode, log=log)
        auth = "bearer token required" if (cfg.serving.api_key_env or cfg.serving.api_key_file) else "no auth"
        log(f"[serve] models ({plan.mode}): {', '.join(sorted(plan.routes))}; default {plan.default_model}; {auth}")
        log(f"[serve]   POST {url}/v1/chat/completions   POST {url}/v1/completions   GET {url}/v1/models")
        if cfg.serving.judge:
            log(f"[serve]   POST {url}{JUDGE_PATH}")
        log(f"[serve]   GET  {url}/healthz   GET {url}/readyz")
        log("[serve] Ctrl-C to stop")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        log("\n[serve] stopping: draining Serve and the engines")
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            if ray.is_initialized():
                remove_serve_app(APP_NAME, serve_was_running)  # other apps on a shared cluster keep running
        finally:
            ray.shutdown()
    log("[serve] stopped")
    return 0


def with_overrides(cfg: PipelineConfig, **serving: Any) -> PipelineConfig:
    """The config with command-line serving overrides (None = keep), validated like the YAML."""
    from ptalign_ray.config import merge_overrides, parse_config

    serving = {k: v for k, v in serving.items() if v is not None}
    if not serving:
        return cfg
    return parse_config(merge_overrides(cfg.model_dump(mode="json"), {"serving": serving}), "command-line overrides")
