"""Protection in front of both HTTP apps (the serving app and the standalone judge): bearer-token
auth, request limits, deadlines.

Why an ASGI middleware and not checks inside the route handlers: it runs before FastAPI parses the
body, so an unauthenticated client gets 401 (not a schema error), an oversized body is cut off at
the limit instead of being read into memory, and limits are checked on the raw JSON with messages
that name the field. Why one middleware for both apps: one body reader and one auth rule, so the
judge cannot drift from the serving app. Why the key is kept only as a SHA-256 digest: the
serialized deployment arguments (stored in Ray's GCS, shown by `serve status` tooling) never hold
the key itself.

Every violation is an OpenAI-style JSON error: 400 bad JSON / over a limit, 401 missing or wrong
key, 413 body too large. Health routes (/healthz, /readyz) stay open for load balancers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

from pydantic import ValidationError

from ptalign_ray.config import JudgeConfig, ServingConfig
from ptalign_ray.http_body import HttpError, error_body, parse_json_body

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


class ApiKeyError(ValueError):
    """The configured API key cannot be read; the message names the field and what to fix."""


def load_api_key(
    section: ServingConfig | JudgeConfig, env: Optional[dict] = None, name: str = "serving"
) -> Optional[str]:
    """The bearer token named by <name>.api_key_env / api_key_file (serving or judge); None when auth is off."""
    env = os.environ if env is None else env
    if section.api_key_env:
        key = (env.get(section.api_key_env) or "").strip()
        if not key:
            raise ApiKeyError(
                f"{name}.api_key_env names ${section.api_key_env}, which is unset or empty; export the key there"
            )
        return key
    if section.api_key_file:
        path = Path(section.api_key_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            raise ApiKeyError(f"{name}.api_key_file {path} cannot be read: {err.strerror}") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise ApiKeyError(f"{name}.api_key_file {path} is empty; put the key on its first line")
        return key
    return None


def key_digest(key: Optional[str]) -> Optional[str]:
    return hashlib.sha256(key.encode()).hexdigest() if key else None


def check_bearer(authorization: Optional[str], digest: Optional[str]) -> None:
    """Raises HttpError(401) unless the Authorization header carries the key (constant-time compare)."""
    if digest is None:
        return
    if not authorization:
        raise HttpError(
            401, "missing API key: send the header 'Authorization: Bearer <key>'", type_="authentication_error"
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HttpError(
            401, "malformed Authorization header: use 'Authorization: Bearer <key>'", type_="authentication_error"
        )
    if not hmac.compare_digest(hashlib.sha256(token.strip().encode()).hexdigest(), digest):
        raise HttpError(401, "invalid API key", type_="authentication_error")


@dataclass(frozen=True)
class Limits:
    """Request limits (from ServingConfig; the standalone judge sets only its body limit)."""

    max_body_bytes: int = 1_000_000
    max_prompt_chars: int = 16_000
    max_tokens: int = 1024
    max_n: int = 4
    max_request_tokens: int = 16_384
    # the setting a 413 names, so the client (or operator) knows what to change
    body_setting: str = "serving.max_body_bytes"
    # Other body limits per path, as (bytes, setting): the judge takes batches of items.
    body_limits: dict[str, tuple[int, str]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, serving: ServingConfig, body_limits: Optional[dict[str, tuple[int, str]]] = None) -> "Limits":
        return cls(
            max_body_bytes=serving.max_body_bytes,
            max_prompt_chars=serving.max_prompt_chars,
            max_tokens=serving.max_tokens_limit,
            max_n=serving.max_n,
            max_request_tokens=serving.max_request_tokens,
            body_limits=dict(body_limits or {}),
        )

    def body_limit(self, path: str) -> tuple[int, str]:
        return self.body_limits.get(path, (self.max_body_bytes, self.body_setting))


def _text_chars(content: Any) -> int:
    """Characters of text in a chat message content: a string or a list of content parts."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        n = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                n += len(part["text"])
            elif isinstance(part, str):
                n += len(part)
        return n
    return 0


def _prompt_chars(prompt: Any) -> int:
    """Size of a completions prompt: characters of text, or one per token id."""
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list):
        return sum(_prompt_chars(p) if isinstance(p, (str, list)) else 1 for p in prompt)
    return 0


ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def _check_messages(messages: Any) -> None:
    """Chat messages: {role, content} objects with a known role and text content (a string or a
    list of {"type": "text", "text": ...} parts); anything else is a 400 naming the message."""
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise HttpError(400, f"{where} must be an object like {{'role': 'user', 'content': '...'}}", "messages")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            shown = repr(role)[:40]
            raise HttpError(400, f"{where}.role must be one of {sorted(ROLES)}, got {shown}", "messages")
        content = m.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise HttpError(400, f"{where}.content must be a string or a list of text parts", "messages")
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise HttpError(
                    400, f"{where}.content[{j}] must be {{'type': 'text', 'text': '...'}} (text only)", "messages"
                )


def _prompt_count(prompt: Any) -> int:
    """How many prompts a completions request holds (a string or token list is one)."""
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        return len(prompt)
    return 1


def _positive_int(data: dict, key: str, limit: int, what: str) -> None:
    value = data.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpError(400, f"{key} must be an integer, got {value!r}", key)
    if value < 1:
        raise HttpError(400, f"{key} must be at least 1, got {value}", key)
    if value > limit:
        raise HttpError(400, f"{key}={value} is above this server's limit of {limit} ({what}); ask for fewer", key)


def check_generation_request(path: str, data: Any, limits: Limits) -> None:
    """Checks a chat / completions body against the limits; raises HttpError(400) naming the field.

    Only what the limits need is checked here; the OpenAI schema itself is validated afterwards by
    the route (also 400, naming the field).
    """
    if not isinstance(data, dict):
        raise HttpError(400, f"body must be a JSON object, got {type(data).__name__}")
    for key in ("max_tokens", "max_completion_tokens"):
        _positive_int(data, key, limits.max_tokens, "serving.max_tokens_limit")
    for key in ("n", "best_of"):
        _positive_int(data, key, limits.max_n, "serving.max_n")
    if path == CHAT_PATH:
        messages = data.get("messages")
        _check_messages(messages)
        chars = sum(_text_chars(m.get("content")) for m in messages)
        param, prompts = "messages", 1
    else:
        if "prompt" not in data:
            raise HttpError(400, "prompt is required", "prompt")
        chars = _prompt_chars(data.get("prompt"))
        param, prompts = "prompt", _prompt_count(data.get("prompt"))
    # the work of a request, not only its size: prompts x n x max_tokens generated tokens
    per_answer = data.get("max_tokens") or data.get("max_completion_tokens") or limits.max_tokens
    answers = prompts * max(int(data.get("n") or 1), int(data.get("best_of") or 1))
    if answers * per_answer > limits.max_request_tokens:
        raise HttpError(
            400,
            f"this request asks for up to {answers} answers x {per_answer} tokens = {answers * per_answer} tokens; "
            f"this server generates at most {limits.max_request_tokens} per request (serving.max_request_tokens): "
            "send fewer prompts, a smaller n or a smaller max_tokens",
            param,
        )
    if chars > limits.max_prompt_chars:
        raise HttpError(
            400,
            f"{param} hold {chars} characters; this server accepts at most {limits.max_prompt_chars} "
            "(serving.max_prompt_chars): shorten the prompt",
            param,
        )


def check_schema(validate: Callable[[Any], Any], data: dict) -> None:
    """Runs the route's own request model on the body first. A ValidationError is left to the route
    (its 400 names the field); any other exception is a model validator that assumed a type - found
    by the schema fuzz: vLLM's ``structured_outputs: true`` raised AttributeError, a 500 - and
    becomes a 400 naming the field it comes from."""
    try:
        validate(data)
    except ValidationError:
        return
    except Exception as err:  # noqa: BLE001 - whatever a third-party validator raises is the client's 400
        field = _breaking_field(validate, data)
        where = f"{field} has" if field else "the body has"
        raise HttpError(
            400,
            f"{where} a value of the wrong type ({type(err).__name__}: {str(err)[:120]}); "
            "send the type the OpenAI API reference gives for it",
            field,
        ) from None


def _breaking_field(validate: Callable[[Any], Any], data: dict) -> Optional[str]:
    """The top-level field without which the body no longer crashes the validator."""
    for key in data:
        try:
            validate({k: v for k, v in data.items() if k != key})
        except ValidationError:
            return key
        except Exception:  # noqa: BLE001 - still crashing: not this field
            continue
        return key
    return None


def _header(scope: dict, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def route_path(scope: dict) -> str:
    """The path inside the application (without Serve's route prefix)."""
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and root != "/" and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class ProtectionMiddleware:
    """ASGI middleware: auth on every route but health, body size, generation limits, request models
    that crash instead of failing validation.

    The body is read here (at most the limit) and replayed to the application; after the replay,
    ``receive`` is the client's again so disconnects still cancel streaming generations.
    """

    def __init__(
        self,
        app,
        *,
        digest: Optional[str],
        limits: Limits,
        open_paths=OPEN_PATHS,
        validators: Optional[dict[str, Callable[[Any], Any]]] = None,
    ):
        self.app = app
        self.digest = digest
        self.limits = limits
        self.open_paths = frozenset(open_paths)
        # path -> the route's request model (model_validate), run by check_schema
        self.validators = dict(validators or {})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = route_path(scope)
        try:
            if path not in self.open_paths:
                check_bearer(_header(scope, b"authorization"), self.digest)
            if scope.get("method") not in ("POST", "PUT", "PATCH"):
                return await self.app(scope, receive, send)
            body = await read_body(scope, receive, *self.limits.body_limit(path))
            if path in (CHAT_PATH, COMPLETIONS_PATH):
                data = parse_json_body(body, "a JSON object (see the OpenAI API reference)")
                check_generation_request(path, data, self.limits)
                if path in self.validators:
                    check_schema(self.validators[path], data)
        except HttpError as err:
            return await _send_json(send, err.status, err.body(), auth=err.status == 401)

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def read_body(scope, receive, limit: int, setting: str) -> bytes:
    """The request body from ASGI ``receive``, refused with 413 as soon as it passes ``limit`` bytes
    (declared Content-Length first, then while streaming): an oversized body is never held in memory."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"request body is {declared} bytes; the limit is {limit} ({setting})")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"request body is over the limit of {limit} bytes ({setting})")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_json(send, status: int, payload: dict, auth: bool = False) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if auth:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def timeout_message(timeout_s: float) -> str:
    return (
        f"the request did not finish within {timeout_s:g}s (serving.request_timeout_s); ask for fewer tokens "
        "or retry when the server is less busy"
    )


async def stream_with_deadline(chunks: AsyncIterator[str], deadline: float, timeout_s: float) -> AsyncIterator[str]:
    """Passes SSE chunks through until ``deadline`` (loop time); then sends an error event and
    [DONE] and closes the upstream generator (which cancels the generation in the engine).

    A stream has already sent its 200 status, so a late timeout can only be reported in-band.
    """
    loop = asyncio.get_running_loop()
    it = chunks.__aiter__()
    try:
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                chunk = await asyncio.wait_for(it.__anext__(), remaining)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                yield "data: " + json.dumps(error_body(504, timeout_message(timeout_s), type_="timeout")) + "\n\n"
                yield "data: [DONE]\n\n"
                return
            yield chunk
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:  # noqa: BLE001 - closing a cancelled upstream must not mask the response
                pass
