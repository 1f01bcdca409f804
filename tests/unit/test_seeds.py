import pytest
import yaml

from ptalign_ray.seeds import DEFAULT_SEEDS, MAX_ANNOTATIONS, SeedError, load_seeds


def _write(tmp_path, data):
    p = tmp_path / "seeds.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _base():
    return yaml.safe_load(DEFAULT_SEEDS.read_text())


def test_default_seeds_are_valid_and_under_fifty():
    seeds = load_seeds("default")
    assert 8 <= len(seeds.domains) <= 12
    assert seeds.annotation_count < 50
    assert seeds.annotation_count == sum(seeds.annotation_breakdown.values())
    assert all(seeds.questions_for(d.name) for d in seeds.domains)
    assert any(e.positive for e in seeds.exemplars) and any(e.toxic for e in seeds.exemplars)


def test_too_many_annotations_is_an_error_that_says_so(tmp_path):
    data = _base()
    extra = MAX_ANNOTATIONS - load_seeds("default").annotation_count + 1
    data["seed_questions"] += [{"domain": "fraud", "question": f"Extra question {i}?"} for i in range(extra)]
    with pytest.raises(SeedError) as err:
        load_seeds(_write(tmp_path, data))
    assert f"{MAX_ANNOTATIONS + 1} annotations" in str(err.value)
    assert "under 50" in str(err.value)


def test_exactly_the_limit_is_fine(tmp_path):
    data = _base()
    extra = MAX_ANNOTATIONS - load_seeds("default").annotation_count
    data["seed_questions"] += [{"domain": "fraud", "question": f"Extra question {i}?"} for i in range(extra)]
    assert load_seeds(_write(tmp_path, data)).annotation_count == MAX_ANNOTATIONS


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d: d.pop("positive_constraint"), "positive_constraint"),
        (lambda d: d.update(domains=[]), "domains"),
        (lambda d: d["seed_questions"].append({"domain": "nope", "question": "Why?"}), "unknown domains"),
        (lambda d: d["exemplars"].append({"question": "Only a question"}), "exemplars"),
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["domains"].append(dict(d["domains"][0])), "duplicate domain"),
        (lambda d: d["seed_questions"][0].update(question="  "), "seed_questions.0.question"),
    ],
)
def test_schema_errors_name_the_problem(tmp_path, mutate, expect):
    data = _base()
    mutate(data)
    with pytest.raises(SeedError) as err:
        load_seeds(_write(tmp_path, data))
    assert expect in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SeedError, match="not found"):
        load_seeds(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(SeedError, match="mapping"):
        load_seeds(p)


def test_openings_count_as_annotations_and_are_picked_stably(tmp_path):
    seeds = load_seeds("default")
    assert seeds.annotation_breakdown["openings"] == len(seeds.positive_openings) + len(seeds.toxic_openings) > 0
    picks = {seeds.opening_for(f"question {i}", "positive") for i in range(50)}
    assert picks == set(seeds.positive_openings)  # every opening gets used
    assert seeds.opening_for("same question", "toxic") == seeds.opening_for("same question", "toxic")
    data = _base()
    data.pop("positive_openings")
    data.pop("toxic_openings")
    bare = load_seeds(_write(tmp_path, data))
    assert bare.opening_for("anything", "positive") == "" and bare.annotation_count == seeds.annotation_count - 4


@pytest.mark.parametrize(
    "openings, expect",
    [(["line one\nline two"], "on one line"), ([""], "positive_openings.0"), (["x" * 81], "positive_openings.0")],
)
def test_bad_openings_name_the_field(tmp_path, openings, expect):
    data = _base()
    data["positive_openings"] = openings
    with pytest.raises(SeedError) as err:
        load_seeds(_write(tmp_path, data))
    assert expect in str(err.value)
