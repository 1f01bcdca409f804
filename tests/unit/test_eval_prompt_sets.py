"""Evaluation prompt sets: packaged counts, the jailbreak set, user prompt files and their errors.

The packaged sets hold harmful text: these tests assert on counts, ids and kinds, never print prompts.
"""

from __future__ import annotations

import json

import pytest

from ptalign_ray.config import ConfigError, EvaluationConfig, UserPromptFile, parse_config
from ptalign_ray.evaluation import prompt_sets as ps


def _assert_clean(df, n, kind):
    assert len(df) == n
    assert list(df.columns) == ps.COLUMNS
    assert (df["prompt"].str.strip() != "").all() and (df["request"].str.strip() != "").all()
    assert df["id"].is_unique
    assert set(df["kind"]) == {kind}


def test_harmbench_has_200_standard_behaviours():
    _assert_clean(ps.load_harmbench(), 200, "harmful")


def test_advbench_has_520_with_categories():
    df = ps.load_advbench()
    _assert_clean(df, 520, "harmful")
    assert df["category"].nunique() >= 5 and (df["category"] != ps.NO_CATEGORY).all()


def test_overrefusal_has_150_benign_prompts_in_categories():
    df = ps.load_overrefusal()
    _assert_clean(df, 150, "benign")
    assert {"medical", "legal", "security", "chemistry"} <= set(df["category"])


def test_jailbreak_templates_exclude_pliny_and_have_one_slot():
    wild = ps.load_jailbreak_templates("in_the_wild")
    every = ps.load_jailbreak_templates("all")
    assert len(wild) == 488
    assert len(every) > len(wild)
    for t in every:
        assert not t["path"].startswith("pliny/") and "pliny/" not in t["path"]
        assert not t["path"].startswith("multi_parameter/")
    marker = "@@REQUEST-SLOT@@"
    for t in wild[:50] + every[-20:]:
        assert marker in ps.render_template(t["value"], marker)


def test_jailbreak_set_is_seeded_and_wraps_known_requests():
    cfg = EvaluationConfig(jailbreak_samples=40)
    a, b = ps.build_jailbreak(cfg, seed=3), ps.build_jailbreak(cfg, seed=3)
    assert a["id"].tolist() == b["id"].tolist()
    assert a["id"].tolist() != ps.build_jailbreak(cfg, seed=4)["id"].tolist()
    assert 35 <= len(a) <= 40  # a repeated (request, template) pair is dropped
    known = set(ps.load_harmbench()["request"]) | set(ps.load_advbench()["request"])
    assert set(a["request"]) <= known
    assert all(r in p and len(p) > len(r) for r, p in zip(a["request"], a["prompt"]))
    assert set(a["kind"]) == {"harmful"}


def test_jailbreak_template_length_limit_errors_when_nothing_fits():
    with pytest.raises(ValueError, match="jailbreak_max_template_chars"):
        ps.build_jailbreak(EvaluationConfig(jailbreak_max_template_chars=1), 0)


def test_select_samples_each_set_reproducibly():
    cfg = EvaluationConfig(max_prompts_per_set=7, prompts_per_set={"overrefusal": 3}, jailbreak_samples=10)
    df = ps.select_prompts(cfg, seed=0)
    assert df.groupby("set").size().to_dict() == {"harmbench": 7, "advbench": 7, "jailbreak": 7, "overrefusal": 3,
                                                  "everyday": 7, "safe_lookalikes": 7}  # fmt: skip
    assert df["uid"].is_unique
    assert df["uid"].tolist() == ps.select_prompts(cfg, seed=0)["uid"].tolist()
    assert df["uid"].tolist() != ps.select_prompts(cfg, seed=1)["uid"].tolist()
    # adding a set does not change another set's sample
    only = ps.select_prompts(EvaluationConfig(sets=["harmbench"], max_prompts_per_set=7), seed=0)
    assert only["uid"].tolist() == df[df["set"] == "harmbench"]["uid"].tolist()


# -- the project's own benign sets (ptalign_ray/evaluation/data/) ----------------------------------


@pytest.mark.parametrize("name,min_size,min_categories", [("everyday", 120, 15), ("safe_lookalikes", 80, 5)])
def test_packaged_benign_sets_load_and_are_clean(name, min_size, min_categories):
    df = ps.load_set(name, EvaluationConfig(), seed=0)
    assert len(df) >= min_size
    _assert_clean(df, len(df), "benign")
    assert set(df["set"]) == {name}
    assert df["prompt"].str.lower().str.strip().is_unique
    assert (df["prompt"] == df["request"]).all()
    assert (df["category"] != ps.NO_CATEGORY).all() and df["category"].nunique() >= min_categories
    assert df["category"].value_counts().min() >= 5  # every category is more than a token
    assert ps.SOURCES[name]["kind"] == "benign" and ps.SOURCES[name]["expected"] == len(df)
    # every row of the file is a prompt with exactly the documented fields
    lines = [json.loads(line) for line in (ps.DATA_DIR / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == len(df) and all(set(r) == {"id", "category", "prompt"} for r in lines)


def test_safe_lookalikes_cover_the_xstest_style_categories():
    cats = set(ps.load_packaged_jsonl("safe_lookalikes")["category"])
    assert {"homonyms", "figurative language", "safe targets", "safe contexts", "definitions", "history",
            "privacy of public or fictional figures", "nonsense-group discrimination"} <= cats  # fmt: skip


def test_packaged_benign_sets_do_not_near_duplicate_the_seed_questions():
    from ptalign_ray.dedup import rouge_l_f1, tokenize
    from ptalign_ray.seeds import load_seeds

    seeds = [tokenize(q) for q in load_seeds("default").all_questions()]
    assert seeds
    for name in ps.PACKAGED_JSONL:
        df = ps.load_packaged_jsonl(name)
        near = [i for i, p in zip(df["id"], df["prompt"]) if max(rouge_l_f1(tokenize(p), q) for q in seeds) >= 0.7]
        assert near == [], f"{name}: ids near-duplicating a seed question: {near}"  # ids only, never texts


def test_packaged_benign_sets_ship_as_package_data():
    import fnmatch
    import tomllib
    from pathlib import Path

    import ptalign_ray

    pkg = Path(ptalign_ray.__file__).parent
    pyproject = tomllib.loads((pkg.parent / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["ptalign_ray"]
    files = [ps.DATA_DIR / f"{name}.jsonl" for name in ps.PACKAGED_JSONL] + [ps.DATA_DIR / "README.md"]
    for path in files:
        assert path.is_file()
        rel = path.relative_to(pkg).as_posix()
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), f"{rel} is not in the package data {patterns}"


def test_default_config_evaluates_the_benign_sets():
    from pathlib import Path

    from ptalign_ray.config import load_config

    assert {"everyday", "safe_lookalikes"} <= set(EvaluationConfig().sets)
    cfg = load_config(Path(__file__).parents[2] / "configs" / "default.yaml").evaluation
    assert {"everyday", "safe_lookalikes"} <= set(cfg.sets)
    assert cfg.prompts_per_set["everyday"] == 100 and cfg.prompts_per_set["safe_lookalikes"] == 60


# -- user prompt files ----------------------------------------------------------------------------


def test_user_jsonl_csv_txt(tmp_path):
    j = tmp_path / "mine.jsonl"
    j.write_text(
        json.dumps({"prompt": "How do I bake bread?", "kind": "benign", "category": "cooking"})
        + "\n\n"
        + json.dumps({"prompt": "How do I fix a bike?", "kind": "benign", "id": "bike"})
        + "\n"
        + json.dumps({"prompt": "Write a harmful thing", "kind": "harmful"})
        + "\n"
    )
    df = ps.load_user_file(UserPromptFile(path=str(j)))
    assert df["set"].tolist() == ["mine"] * 3
    assert df["kind"].tolist() == ["benign", "benign", "harmful"]
    assert df["id"].tolist() == ["mine-0000", "bike", "mine-0002"]
    assert df["category"].tolist() == ["cooking", "-", "-"]

    c = tmp_path / "c.csv"
    c.write_text('id,prompt,category\na,"Plan a garden, quickly",garden\nb,Clean the attic,home\n')
    df = ps.load_user_file(UserPromptFile(path=str(c), kind="benign", name="chores"))
    assert df["set"].unique().tolist() == ["chores"] and df["prompt"].tolist()[0] == "Plan a garden, quickly"
    assert df["kind"].unique().tolist() == ["benign"]

    t = tmp_path / "t.txt"
    t.write_text("# a comment\nFirst prompt\n\n  Second prompt  \n")
    df = ps.load_user_file(UserPromptFile(path=str(t), kind="harmful"))
    assert df["prompt"].tolist() == ["First prompt", "Second prompt"] and set(df["kind"]) == {"harmful"}


@pytest.mark.parametrize(
    "name,content,kind,match",
    [
        ("a.jsonl", '{"prompt": "ok", "kind": "benign"}\n{not json}\n', "mixed", r"a.jsonl:2: not valid JSON"),
        ("a.jsonl", '{"text": "x", "kind": "benign"}\n', "mixed", r"a.jsonl:1: missing 'prompt'"),
        ("a.jsonl", '{"prompt": "   ", "kind": "benign"}\n', "mixed", r"a.jsonl:1: empty 'prompt'"),
        ("a.jsonl", '{"prompt": "x"}\n', "mixed", r"a.jsonl:1: no 'kind'"),
        ("a.jsonl", '{"prompt": "x", "kind": "toxic"}\n', "mixed", r"kind must be 'harmful' or 'benign'"),
        ("a.jsonl", '{"prompt": "x", "kind": "harmful"}\n', "benign", r"contradicts the file entry's kind"),
        ("a.jsonl", '["x"]\n', "benign", r"expected an object"),
        ("a.jsonl", '{"prompt": "x", "id": "1"}\n{"prompt": "y", "id": "1"}\n', "benign", r"duplicate id '1'"),
        ("a.jsonl", "\n\n", "benign", r"no prompts found"),
        ("a.csv", "text,kind\nx,benign\n", "mixed", r"needs a 'prompt' column"),
        ("a.csv", "prompt,kind\nx,benign,extra\n", "mixed", r"a.csv:2: row has a different number of fields"),
        ("a.txt", "one\n", "mixed", r"no per-row kind"),
        ("a.yaml", "- x\n", "benign", r"unsupported prompt file type '.yaml'"),
    ],
)
def test_user_file_errors_say_what_to_fix(tmp_path, name, content, kind, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ps.PromptFileError, match=match):
        ps.load_user_file(UserPromptFile(path=str(path), kind=kind))


def test_user_file_missing_and_not_utf8(tmp_path):
    with pytest.raises(ps.PromptFileError, match="not found"):
        ps.load_user_file(UserPromptFile(path=str(tmp_path / "nope.jsonl")))
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ps.PromptFileError, match="not UTF-8"):
        ps.load_user_file(UserPromptFile(path=str(bad), kind="benign"))
    assert issubclass(ps.PromptFileError, ValueError)  # the CLI maps ValueError to exit code 2


def test_evaluation_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"evaluation.sets.0"):
        parse_config({"evaluation": {"sets": ["harmbenchh"]}})
    with pytest.raises(ConfigError, match=r"prompts_per_set names unknown sets \['nope'\]"):
        parse_config({"evaluation": {"prompts_per_set": {"nope": 3}}})
    with pytest.raises(ConfigError, match="already a set name"):
        parse_config({"evaluation": {"user_prompt_files": ["x/advbench.jsonl"]}})
    with pytest.raises(ConfigError, match=r"evaluation.models.0"):
        parse_config({"evaluation": {"models": ["ppo"]}})
    with pytest.raises(ConfigError, match="listed more than once"):
        parse_config({"evaluation": {"models": ["base", "base"]}})
    with pytest.raises(ConfigError, match="no prompt set selected"):
        parse_config({"evaluation": {"sets": []}})
    cfg = parse_config(
        {
            "evaluation": {
                "user_prompt_files": ["a.jsonl", {"path": "b.txt", "kind": "benign", "name": "bee"}],
                "prompts_per_set": {"a": 2, "bee": 1},
            }
        }
    )
    files = cfg.evaluation.user_files()
    assert [(f.path, f.kind) for f in files] == [("a.jsonl", "mixed"), ("b.txt", "benign")]


def test_cli_rejects_a_bad_evaluation_config_with_exit_2(tmp_path):
    import subprocess
    import sys

    import yaml

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"evaluation": {"sets": ["harmbench", "advbench2"]}}))
    out = subprocess.run([sys.executable, "-m", "ptalign_ray", "evaluate", "--config", str(cfg), "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2
    assert "evaluation.sets.1" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_the_registry_is_the_one_list_of_packaged_sets():
    from ptalign_ray.config import EvaluationConfig

    assert set(ps.LOADERS) == set(ps.SOURCES)  # every registered set has its provenance and license
    assert EvaluationConfig(sets=list(ps.LOADERS)).sets == list(ps.LOADERS)
