"""Shared fixtures: loopback-only Ray, a local cache home, the tiny test model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Everything the tests start stays on loopback and offline.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PTALIGN_HOME", str(REPO / ".cache" / "ptalign-home"))


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    from tiny_model import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from ptalign_ray.chat_template import load_tokenizer

    return load_tokenizer(str(tiny_model))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray on 127.0.0.1 for the whole session, started by the tests themselves."""
    from ptalign_ray.config import RayConfig
    from ptalign_ray.ray_runtime import init_ray

    ray = init_ray(RayConfig(num_cpus=4))
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def _release_kept_engines():
    """`ptalign` keeps one vLLM engine per model per process for its later steps; in the test process
    that would keep a module's engine (GiBs, and a vLLM worker's CPU) alive through every later test."""
    yield
    generation = sys.modules.get("ptalign_ray.generation")
    if generation is not None:
        generation.release_engines()


FUZZ_LINES = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def fuzz_report(request) -> list:
    """Lines the schema fuzz tests add (request counts, statuses); printed at the end of the run."""
    return request.config.stash.setdefault(FUZZ_LINES, [])


def pytest_sessionfinish(session):
    """On a pytest-xdist worker: hand the fuzz lines to the controller, which prints the summary."""
    out = getattr(session.config, "workeroutput", None)
    if out is not None:
        out["fuzz_lines"] = list(session.config.stash.get(FUZZ_LINES, []))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """On the pytest-xdist controller: collect each worker's fuzz lines."""
    lines = getattr(node, "workeroutput", {}).get("fuzz_lines", [])
    node.config.stash.setdefault(FUZZ_LINES, []).extend(lines)


def pytest_terminal_summary(terminalreporter, config):
    lines = config.stash.get(FUZZ_LINES, [])
    if lines:
        terminalreporter.section("schema fuzz")
        for line in lines:
            terminalreporter.write_line(line)
        total = sum(int(line.split(": ", 2)[2].split()[0]) for line in lines)
        terminalreporter.write_line(f"fuzz: {total} requests in all")
