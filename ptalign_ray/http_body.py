"""Raw HTTP body -> JSON, with the same 400s for every route that reads one (judge, OpenAI routes)."""

from __future__ import annotations

import json


class BodyError(ValueError):
    """A body that is not JSON; ``status`` is the HTTP status and the message says what to send."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_json_body(body: bytes, example: str) -> object:
    """The decoded body; ``example`` is shown when the body is empty (what a valid one looks like)."""
    if not body.strip():
        raise BodyError(400, f"empty body: send {example}")
    try:
        return json.loads(body)
    except RecursionError:
        raise BodyError(400, "body is nested too deeply: send a flat JSON object") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, integers over Python's digit limit
        raise BodyError(400, f"body is not valid JSON: {str(err)[:200]}") from None


async def read_body_limited(request, limit: int, setting: str) -> bytes:
    """A Starlette request's body, refused with 413 as soon as it passes ``limit`` bytes (declared
    Content-Length first, then while streaming): an oversized body is never read into memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyError(413, f"request body is {declared} bytes; the limit is {limit} ({setting})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"request body is over the limit of {limit} bytes ({setting})")
        chunks.append(chunk)
    return b"".join(chunks)
