"""Raw HTTP body -> JSON and the one HTTP error type, with the same 4xx for every route (judge, OpenAI routes)."""

from __future__ import annotations

import json
from typing import Optional


class HttpError(Exception):
    """The one error type of every HTTP route (serving app, judge): a 4xx status and a message that
    says what to fix; ``body()`` is the OpenAI error shape, so SDKs raise their usual exceptions."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.type)


def error_body(status: int, message: str, param: Optional[str] = None, type_: str = "invalid_request_error") -> dict:
    """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": status}}


def parse_json_body(body: bytes, example: str) -> object:
    """The decoded body; ``example`` is shown when the body is empty (what a valid one looks like)."""
    if not body.strip():
        raise HttpError(400, f"empty body: send {example}")
    try:
        return json.loads(body)
    except RecursionError:
        raise HttpError(400, "body is nested too deeply: send a flat JSON object") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, integers over Python's digit limit
        raise HttpError(400, f"body is not valid JSON: {str(err)[:200]}") from None
