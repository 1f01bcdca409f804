import pytest
import yaml

from ptalign_ray.seeds import MAX_ANNOTATIONS, DEFAULT_SEEDS, SeedError, load_seeds


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
