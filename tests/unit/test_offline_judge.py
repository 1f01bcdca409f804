"""The offline safety judge: refusal markers, verdict schema, batch judging, training provenance.

Examples here are written for the tests and kept benign; nothing from an evaluation set is printed.
"""

from __future__ import annotations

import csv
import importlib.util
import io
from pathlib import Path

import pytest
from pydantic import ValidationError

from ptalign_ray.judging import Verdict, detect_refusal, is_refusal
from ptalign_ray.judging.refusal import garak_markers, normalize
from ptalign_ray.judging.training_data import all_training_texts
from ptalign_ray.seeds import load_seeds

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I\u2019m sorry, but I can\u2019t help with that.",  # curly apostrophes
    "\n\n   I cannot assist with this request.",  # leading whitespace
    "**I can't help with that.**",  # markdown
    "As an AI language model, I must decline.",
    "Thanks for asking. Unfortunately that's not something I can help with.",
]
NOT_REFUSALS = [
    "Sure, here is a recipe for pancakes: mix flour, milk and eggs, then fry them.",
    "I can't stress enough how much a good night's sleep helps.",
    "The capital of France is Paris.",
    "Here are three tips for growing tomatoes: sun, water and support.",
]


def _find_package(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def judge():
    import torch

    torch.set_num_threads(1)
    from ptalign_ray.judging import OfflineJudge

    return OfflineJudge()


# -- refusal markers -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", REFUSALS)
def test_clear_refusals_are_detected(text: str) -> None:
    match = detect_refusal(text)
    assert match.refusal and match.marker and match.kind in {"prefix", "phrase"}


@pytest.mark.parametrize("text", NOT_REFUSALS)
def test_compliant_answers_are_not_refusals(text: str) -> None:
    assert not is_refusal(text)
    assert detect_refusal(text).marker is None


def test_refusal_deep_in_a_long_answer_does_not_count() -> None:
    answer = "Here is a detailed pancake recipe. " * 30 + "I can't help with waffles, though."
    assert not is_refusal(answer)


def test_normalize() -> None:
    assert normalize("  \n> **I\u2019m  SORRY**") == "i'm sorry**"


def test_garak_markers_are_read_without_importing_garak() -> None:
    if _find_package("garak") is None:
        pytest.skip("garak data package not installed")
    import sys

    prefixes, phrases = garak_markers()
    assert "i'm sorry" in prefixes and "i cannot assist" in phrases
    assert "bias" not in phrases  # topic words from garak's list are filtered out
    assert "garak" not in sys.modules


# -- verdict schema --------------------------------------------------------------------------------


def test_verdict_schema() -> None:
    v = Verdict(harmful=False, refusal=True, score=0.1, categories=[], rationale="refusal marker 'i cannot'")
    assert set(v.model_dump()) == {"harmful", "refusal", "score", "categories", "rationale", "on_topic", "error"}
    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError):
            Verdict(harmful=False, refusal=False, score=bad)


# -- the judge -------------------------------------------------------------------------------------


def test_batch_of_items(judge) -> None:
    seeds = load_seeds()
    exemplar = seeds.exemplars[0]
    items = [
        {"prompt": "Give me a recipe for pancakes.", "response": NOT_REFUSALS[0]},
        {"prompt": "Give me a recipe for pancakes.", "response": "I'm sorry, but I can't help with that."},
        {"prompt": exemplar.question, "response": exemplar.toxic},
        {"prompt": exemplar.question, "response": exemplar.positive},
        {"prompt": "What is the capital of France?", "response": "Bananas are rich in potassium."},
        {"prompt": "Anything", "response": "   "},
    ]
    verdicts = judge.judge(items)
    assert len(verdicts) == len(items)
    for v in verdicts:
        assert isinstance(v, Verdict) and 0.0 <= v.score <= 1.0 and v.rationale
        assert v.harmful == (v.score >= judge.threshold)
        assert set(v.categories) <= {d.name for d in seeds.domains}
        assert bool(v.categories) == v.harmful

    pancakes, refused, toxic, positive, off_topic, empty = verdicts
    assert not pancakes.harmful and not pancakes.refusal
    assert refused.refusal and not refused.harmful and "refusal marker" in refused.rationale
    assert toxic.harmful and not toxic.refusal and toxic.categories
    assert not positive.harmful
    assert off_topic.refusal and not off_topic.harmful and "off-topic" in off_topic.rationale
    assert off_topic.on_topic is False and pancakes.on_topic is True and positive.on_topic is True
    assert empty.refusal and not empty.harmful and empty.score == 0.0 and empty.on_topic is None


def test_harmful_request_hint(judge) -> None:
    item = {"prompt": "Write a poem about autumn.", "response": "Leaves drift down in gold and red."}
    assert judge.judge([{**item, "harmful_request": False}])[0].score == 0.0
    assert judge.judge([item])[0].harmful is False


def test_categories_are_seed_domains(judge) -> None:
    seeds = load_seeds()
    names = {d.name for d in seeds.domains}
    items = [{"prompt": e.question, "response": e.toxic, "harmful_request": True} for e in seeds.exemplars if e.toxic]
    for v in judge.judge(items):
        assert v.harmful and v.categories and set(v.categories) <= names


def test_empty_batch_and_bad_items(judge) -> None:
    assert judge.judge([]) == []
    with pytest.raises(TypeError):
        judge.judge(["not a mapping"])  # type: ignore[list-item]


def test_deterministic(judge) -> None:
    items = [{"prompt": "How can I sleep better?", "response": "Keep a regular schedule and avoid screens."}]
    assert judge.judge(items) == judge.judge(items)


def test_describe_names_only_project_sources(judge) -> None:
    info = judge.describe()
    sources = {**info["stance_training_texts"], **info["request_training_texts"]}
    assert sources and all(s.startswith(("seed:", "prototype:")) for s in sources)
    assert 0.0 < info["relevance_threshold"] < 1.0


# -- training provenance ---------------------------------------------------------------------------


def _pyrit_eval_texts() -> list[str]:
    root = _find_package("pyrit")
    if root is None:
        pytest.skip("pyrit data package not installed")
    texts = []
    for path in sorted((root / "datasets" / "scorer_evals").rglob("*.csv")):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines(True) if not line.startswith("#")]
        for row in csv.reader(io.StringIO("".join(lines))):
            texts.extend(cell for cell in row if len(cell) >= 20)
    assert texts, "no pyrit evaluation texts found"
    return texts


def test_training_texts_do_not_come_from_pyrit_eval_sets() -> None:
    training = [normalize(t) for t in all_training_texts(load_seeds())]
    assert len(training) > 100
    eval_texts = [normalize(t) for t in _pyrit_eval_texts()]
    eval_set = set(eval_texts)
    blob = "\n".join(eval_texts)
    # no training text equal to, or (when long enough to be meaningful) copied out of, an eval text;
    # the message names our own texts only, never eval text
    copied = [t for t in training if t in eval_set or (len(t) >= 40 and t in blob)]
    assert not copied, f"training texts found in pyrit eval data: {copied}"


def test_judging_package_does_not_read_pyrit() -> None:
    source = "\n".join(p.read_text() for p in Path(__file__).resolve().parents[2].glob("ptalign_ray/judging/*.py"))
    for needle in ('find_spec("pyrit")', "import pyrit", "scorer_evals", ".csv"):
        assert needle not in source


def test_one_shared_judge_per_seed_set_built_once_even_from_the_background(monkeypatch):
    import time

    from ptalign_ray.judging import offline

    built = []

    class SlowJudge:
        def __init__(self, seeds):
            time.sleep(0.2)  # the caller below arrives while the background build is running
            built.append(seeds)

    monkeypatch.setattr(offline, "OfflineJudge", SlowJudge)
    monkeypatch.setattr(offline, "_SHARED", {})
    offline.build_shared_judge_in_background("default")
    time.sleep(0.05)
    first = offline.shared_judge("default")
    assert offline.shared_judge(load_seeds("default")) is first  # the same seed set, named or loaded
    assert len(built) == 1


def test_each_request_is_embedded_once_and_the_cache_is_bounded(judge, monkeypatch) -> None:
    """Evaluation judges three models' answers to the same requests: the second call embeds only the
    answers, and gives the verdicts an uncached judge gives."""
    import numpy as np

    from ptalign_ray.judging import offline

    seen: list[str] = []
    encode = judge.encoder.encode

    def counting(texts, max_length=None):
        seen.extend(texts)
        return encode(texts, max_length=max_length)

    monkeypatch.setattr(judge.encoder, "encode", counting)
    monkeypatch.setattr(judge, "_prompt_cache", offline.OrderedDict())
    requests = ["How can I sleep better?", "What is a good pancake recipe?", "How can I sleep better?"]
    first = [{"prompt": q, "response": f"answer {i}"} for i, q in enumerate(requests)]
    before = judge.judge(first)
    assert sorted(seen) == sorted([*set(requests), "answer 0", "answer 1", "answer 2"])
    seen.clear()
    second = [{"prompt": q, "response": f"another answer {i}"} for i, q in enumerate(requests)]
    judge.judge(second)
    assert sorted(seen) == ["another answer 0", "another answer 1", "another answer 2"]  # no request again
    assert judge.judge(first) == before
    fresh = encode(sorted(set(requests)), max_length=judge.max_prompt_tokens)
    assert np.allclose(judge._prompts(sorted(set(requests))), fresh, atol=1e-6)

    monkeypatch.setattr(offline, "PROMPT_CACHE_SIZE", 2)
    judge._prompts(["a", "b", "c"])
    assert list(judge._prompt_cache) == ["b", "c"]  # the oldest request went first
    assert judge._prompts([]).shape == (0, judge.encoder.dim)
