import json

import pandas as pd
import pytest

from ptalign_ray.refinement.export import ExportRefused, export

DF = pd.DataFrame(
    [{"id": "a1", "question": "Q one?", "positive": "Safe answer.", "toxic": "TOXIC-TEXT"},
     {"id": "b2", "question": "Q two?", "positive": "Another safe answer.", "toxic": "TOXIC-TEXT-2"}]
)  # fmt: skip


def test_sft_export_has_no_toxic_text(tmp_path):
    out = tmp_path / "sft.jsonl"
    assert export(DF, out, "sft") == 2
    text = out.read_text()
    assert "TOXIC" not in text
    rec = json.loads(text.splitlines()[0])
    assert rec["messages"] == [{"role": "user", "content": "Q one?"}, {"role": "assistant", "content": "Safe answer."}]


def test_preference_export_needs_explicit_opt_in(tmp_path):
    out = tmp_path / "pref.jsonl"
    with pytest.raises(ExportRefused, match="--include-toxic"):
        export(DF, out, "preference")
    assert not out.exists()
    assert export(DF, out, "preference", include_toxic=True) == 2
    rec = json.loads(out.read_text().splitlines()[1])
    assert rec["prompt"] == [{"role": "user", "content": "Q two?"}]
    assert rec["chosen"][0]["content"] == "Another safe answer." and rec["rejected"][0]["content"] == "TOXIC-TEXT-2"


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="format"):
        export(DF, tmp_path / "x.jsonl", "dpo")


def test_sft_export_appends_benign_answers_and_preference_does_not(tmp_path):
    benign = pd.DataFrame([{"id": "c3", "question": "How do locks work?", "response": "Pins line up with the key."}])
    out = tmp_path / "sft.jsonl"
    assert export(DF, out, "sft", benign=benign) == 3
    last = json.loads(out.read_text().splitlines()[-1])
    assert last == {"id": "c3", "messages": [{"role": "user", "content": "How do locks work?"},
                                             {"role": "assistant", "content": "Pins line up with the key."}]}  # fmt: skip
    assert export(DF, tmp_path / "pref.jsonl", "preference", include_toxic=True, benign=benign) == 2
