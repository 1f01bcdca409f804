"""The refinement stage's judge client: what it retries and what it gives up on at once."""

from __future__ import annotations

import httpx
import pytest

from ptalign_ray.refinement.client import JudgeClient, JudgeRequestRejected, JudgeUnavailable


def _client(statuses: list[int]) -> tuple[JudgeClient, list[int]]:
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        status = statuses[min(len(seen), len(statuses) - 1)]
        seen.append(status)
        if status == 200:
            return httpx.Response(200, json={"verdicts": [{"harmful": False}]})
        return httpx.Response(status, json={"error": {"message": "x"}})

    client = JudgeClient("http://judge.test", retries=3, backoff_s=0.0)
    client._http = httpx.Client(transport=httpx.MockTransport(handler))
    return client, seen


@pytest.mark.parametrize("first", [408, 429, 500, 503])
def test_proxy_timeouts_overload_and_5xx_are_retried(first):
    client, seen = _client([first, 200])
    assert client.judge(["q"], ["a"]) == [{"harmful": False}]
    assert seen == [first, 200]


def test_a_rejected_request_is_not_retried():
    client, seen = _client([422])
    with pytest.raises(JudgeRequestRejected):
        client.judge(["q"], ["a"])
    assert seen == [422]


def test_gives_up_after_its_retries_with_a_message_that_says_what_to_check():
    client, seen = _client([503])
    with pytest.raises(JudgeUnavailable, match="judge.retries"):
        client.judge(["q"], ["a"])
    assert len(seen) == 4


def test_the_key_is_sent_and_a_refused_key_says_which_setting_to_set():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(401, json={"error": {"message": "invalid API key"}})

    client = JudgeClient("http://judge.test", retries=3, backoff_s=0.0, api_key="k1")
    client._http = httpx.Client(transport=httpx.MockTransport(handler), headers=client._http.headers)
    with pytest.raises(JudgeRequestRejected, match="judge.api_key_env"):
        client.judge(["q"], ["a"])
    assert seen == ["Bearer k1"]  # not retried
