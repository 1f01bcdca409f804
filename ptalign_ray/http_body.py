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
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BodyError(400, f"body is not valid JSON: {err}") from None
