"""Schema-driven HTTP fuzzing of a running app, from its own /openapi.json (schemathesis).

The app is behind an httpx.Client: a real server's URL, or Starlette's TestClient (an httpx.Client)
around the app's ASGI object in this process.

Every operation gets schemathesis's positive (schema-valid) and negative (schema-violating) cases,
and every case is sent three ways: as generated with the API key, without the key (must be 401),
and with its body cut in half (must be a 4xx). The checks: no status >= 500, every answer within
DEADLINE_S, and the RSS growth of the server processes under a bound (checked by the callers).
Bodies are never printed (some generated text could be anything); a failure names the operation,
the variant and the status, and PTALIGN_FUZZ_FAILURES=file.jsonl writes the failing requests there.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

DEADLINE_S = 5.0
OPEN_PATHS = ("/healthz", "/readyz")


@dataclass
class Tally:
    """What was sent and what came back, per app."""

    cases: int = 0
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    slowest_s: float = 0.0
    seconds: float = 0.0
    cpu_s: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def line(self, app: str, how: str) -> str:
        server_errors = sum(n for s, n in self.statuses.items() if s >= 500)
        return (
            f"fuzz: {app} ({how}): {self.requests} requests from {self.cases} schemathesis cases in "
            f"{self.seconds:.0f} s (CPU s {_rounded(self.cpu_s)}), {server_errors} >= 500, "
            f"slowest {self.slowest_s:.2f} s, "
            f"statuses {dict(sorted(self.statuses.items()))}"
        )


def _rounded(values: dict) -> dict:
    return {k: round(v) for k, v in values.items()}


def _request(kwargs: dict) -> tuple[str, str, dict, dict, bytes | None]:
    """method, path, headers, params and body bytes of a serialized case (requests-style kwargs)."""
    url = httpx.URL(kwargs["url"])
    headers = {k: v for k, v in kwargs.get("headers", {}).items() if k.lower() != "x-schemathesis-testcaseid"}
    if "json" in kwargs:
        body = json.dumps(kwargs["json"]).encode()
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        body = data.encode() if isinstance(data, str) else bytes(data)
    else:
        body = None
    return kwargs["method"], url.raw_path.decode().split("?")[0], headers, kwargs.get("params") or {}, body


def _send(client: httpx.Client, tally: Tally, label: str, expect, method, path, headers, params, body) -> None:
    t0 = time.perf_counter()
    try:
        r = client.request(method, path, headers=headers, params=params, content=body, timeout=DEADLINE_S + 5)
        status = r.status_code
    except httpx.TimeoutException:
        status = 599  # counted as a server failure: no answer at all
    elapsed = time.perf_counter() - t0
    tally.requests += 1
    tally.statuses[status] += 1
    tally.slowest_s = max(tally.slowest_s, elapsed)
    problem = None
    if status >= 500:
        problem = f"status {status}"
    elif elapsed > DEADLINE_S:
        problem = f"answered after {elapsed:.1f} s"
    elif not expect(status):
        problem = f"unexpected status {status}"
    if problem and len(tally.failures) < 50:
        tally.failures.append(f"{label}: {problem}")
        if os.environ.get("PTALIGN_FUZZ_FAILURES"):  # to reproduce: the requests go to a file, never the log
            with open(os.environ["PTALIGN_FUZZ_FAILURES"], "a") as f:
                record = {"problem": problem, "method": method, "path": path, "params": params}
                f.write(json.dumps({**record, "body": (body or b"").decode("utf-8", "replace")}) + "\n")


def fuzz_app(
    client: httpx.Client,
    auth: dict[str, str],
    examples: dict[str, tuple[int, int]],
    tally: Tally,
    default: tuple[int, int] = (5, 5),
) -> Tally:
    """Fuzzes every operation of the app behind ``client`` (its base_url); ``examples`` maps an
    operation label ('POST /v1/judge') to (positive, negative) case counts."""
    t0 = time.perf_counter()
    spec = client.get("/openapi.json", headers=auth, timeout=30)
    spec.raise_for_status()
    schema = schemathesis.openapi.from_dict(spec.json())
    for result in schema.get_all_operations():
        op = result.ok()
        counts = examples.get(op.label, default)
        for mode, n in zip((GenerationMode.POSITIVE, GenerationMode.NEGATIVE), counts):
            if n:
                _fuzz_operation(client, op, mode, n, auth, tally)
    tally.seconds += time.perf_counter() - t0
    return tally


def _fuzz_operation(client, op, mode, n: int, auth: dict, tally: Tally) -> None:
    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: failures are collected, not raised
        suppress_health_check=list(HealthCheck),
    )
    @given(op.as_strategy(generation_mode=mode, headers=dict(auth)))
    def run(case):
        tally.cases += 1
        method, path, headers, params, body = _request(case.as_transport_kwargs(base_url=str(client.base_url)))
        label = f"{op.label} [{mode.value}]"
        _send(client, tally, f"{label} as generated", lambda s: True, method, path, headers, params, body)
        if auth and path not in OPEN_PATHS:
            no_key = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            _send(client, tally, f"{label} without key", lambda s: s == 401, method, path, no_key, params, body)
        if body:
            cut = body[: len(body) // 2]
            _send(client, tally, f"{label} body cut", lambda s: 400 <= s < 500, method, path, headers, params, cut)

    try:
        run()
    except Unsatisfiable:  # an operation without inputs has no negative cases
        pass


def rss_mib(pids: dict[str, int]) -> dict[str, float]:
    import psutil

    return {name: psutil.Process(pid).memory_info().rss / 2**20 for name, pid in pids.items()}


def fuzz_with_memory_bound(
    client: httpx.Client, auth: dict, examples: dict, pids: dict[str, int], warmup: float = 0.2
) -> tuple[Tally, dict[str, float]]:
    """fuzz_app in two passes: a warm-up (``warmup`` of the cases: allocator pools, lazy imports,
    caches fill up) and the rest; returns the tally of both and each process's RSS growth (MiB)
    during the second pass, which a leak would show and a warm-up does not."""
    first = {k: (round(p * warmup), round(n * warmup)) for k, (p, n) in examples.items()}
    rest = {k: (p - first[k][0], n - first[k][1]) for k, (p, n) in examples.items()}
    tally, cpu0 = Tally(), _cpu_s(pids)
    fuzz_app(client, auth, first, tally, (2, 2))
    warm = rss_mib(pids)
    fuzz_app(client, auth, rest, tally, (3, 3))
    growth = {name: mib - warm[name] for name, mib in rss_mib(pids).items()}
    tally.cpu_s = {who: used - cpu0[who] for who, used in _cpu_s(pids).items()}
    return tally, growth


def _cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by the fuzzer (this process) and the server processes: on a shared
    machine the wall time says little; their sum is about the wall time on an idle one."""
    import psutil

    def used(proc, children: bool = False) -> float:  # children: the vLLM engine core process
        procs = [proc, *(proc.children(recursive=True) if children else [])]
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    me = psutil.Process()
    servers = [psutil.Process(pid) for pid in pids.values() if pid != me.pid]  # in-process: counted as ours
    return {"fuzzer": used(me), **({"server": sum(used(p, children=True) for p in servers)} if servers else {})}


def serve_pids(*names: str) -> dict[str, int]:
    """PIDs of this test's own Serve actors (replicas, the proxy) whose process title holds one of
    ``names``: Ray names its worker processes 'ray::<actor class>...', and only descendants of this
    process are looked at (other Ray clusters on the machine are left alone)."""
    import psutil

    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        for name in names:
            if title.startswith("ray::") and name in title:
                found[f"{name}#{proc.pid}"] = proc.pid
    return found


def timed(client: httpx.Client, method: str, path: str, **kwargs) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    r = client.request(method, path, timeout=30, **kwargs)
    return r, time.perf_counter() - t0


# The hostile requests of issue #13 ("Hardening"): each must get a 4xx in under HOSTILE_S.
HOSTILE_S = 1.0
HOSTILE = [
    ("100,000 '['", "chat", b"[" * 100_000),
    ("5,000-digit max_tokens", "chat", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}"),
    ("100,000 judge items", "judge", json.dumps({"items": [1] * 100_000}).encode()),
    ("1,024 prompts x n 4 x 1,024 tokens", "completions", json.dumps({"prompt": ["a"] * 1024, "n": 4, "max_tokens": 1024}).encode()),
    ("role 'wizard'", "chat", json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode()),
    ("content list of odd objects", "chat", json.dumps({"messages": [{"role": "user", "content": ["a", {"x": 1}, [None], 3.5]}]}).encode()),
    ("oversized body (2 MB, over every limit of the test apps)", "chat", b'{"messages": "' + b"x" * 2_000_000 + b'"}'),
]  # fmt: skip


def check_hostile(client: httpx.Client, auth: dict[str, str], paths: dict[str, str]) -> list[str]:
    """Sends each hostile request to ``paths[kind]`` (and one valid-looking request without the
    key); returns what went wrong (empty: every one got a 4xx in under HOSTILE_S)."""
    valid = {
        "judge": {"items": [{"prompt": "p", "response": "r"}]},
        "chat": {"messages": [{"role": "user", "content": "hi"}]},
    }
    cases = [(name, paths[kind], auth, body) for name, kind, body in HOSTILE]
    kind = "chat" if "chat" in paths else "judge"
    cases.append(("no API key", paths[kind], {}, json.dumps(valid[kind]).encode()))
    problems = []
    for name, path, headers, body in cases:
        r, elapsed = timed(client, "POST", path, headers={**headers, "content-type": "application/json"}, content=body)
        expected = r.status_code == 401 if name == "no API key" else 400 <= r.status_code < 500
        if not (expected and elapsed < HOSTILE_S and r.json()["error"]["message"]):
            problems.append(f"{name} -> {path}: status {r.status_code} in {elapsed:.2f} s")
    return problems
