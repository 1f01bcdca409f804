"""HTTP client of the judge endpoint, used from Ray Data workers during refinement.

Connection errors, timeouts and 5xx answers are retried with exponential backoff; a judge that stays
unreachable raises JudgeUnavailable with a message that says where and what to do. A 4xx answer is
a bug in the request, never retried.
"""

from __future__ import annotations

import time
from typing import Sequence

import httpx


class JudgeUnavailable(RuntimeError):
    """The judge endpoint did not answer after every retry."""


class JudgeRequestRejected(RuntimeError):
    """The judge answered 4xx: the request itself is wrong."""


RETRIED_4XX = (408, 429)


class JudgeClient:
    def __init__(
        self,
        url: str,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_items: int = 256,
        api_key: str | None = None,
    ):
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_items = max_items
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)

    def _post(self, items: list[dict]) -> list[dict]:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                resp = self._http.post(f"{self.url}/v1/judge", json={"items": items})
            except (httpx.TransportError, httpx.TimeoutException) as err:  # connection refused, reset, timeout
                last = err
            else:
                if resp.status_code < 400:
                    return resp.json()["verdicts"]
                if resp.status_code == 401:
                    raise JudgeRequestRejected(
                        f"the judge at {self.url} wants an API key (401): set judge.api_key_env or "
                        "judge.api_key_file to the key it was started with"
                    )
                # 408 / 429: Serve's proxy timed the request out or is shedding load - retry, like a 5xx
                if resp.status_code < 500 and resp.status_code not in RETRIED_4XX:
                    raise JudgeRequestRejected(f"judge rejected the request ({resp.status_code}): {resp.text[:500]}")
                last = RuntimeError(f"judge answered {resp.status_code}")
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise JudgeUnavailable(
            f"the judge at {self.url} did not answer after {self.retries + 1} tries ({last}); "
            "check that it is running (serve status) or raise judge.retries / judge.request_timeout_s"
        )

    def judge(
        self, prompts: Sequence[str], responses: Sequence[str], harmful_request: bool | Sequence[bool] | None = None
    ) -> list[dict]:
        """Verdicts in order; ``harmful_request`` is what the caller knows about the requests
        (one value for all, or one per item)."""
        items = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
        if harmful_request is not None:
            known = [harmful_request] * len(items) if isinstance(harmful_request, bool) else list(harmful_request)
            items = [{**item, "harmful_request": bool(k)} for item, k in zip(items, known)]
        out: list[dict] = []
        for start in range(0, len(items), self.max_items):
            out.extend(self._post(items[start : start + self.max_items]))
        return out

    def healthy(self) -> bool:
        try:
            return self._http.get(f"{self.url}/healthz", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()
