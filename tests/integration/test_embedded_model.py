"""The embedded default: SmolLM2 materialised from the packaged GGUF, once, safely under concurrency."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ptalign_ray.models import materialise_embedded, resolve_model

pytestmark = pytest.mark.integration

_CHILD = "import sys; from pathlib import Path; from ptalign_ray.models import materialise_embedded; print(materialise_embedded(Path(sys.argv[1])))"


def test_two_processes_materialise_one_intact_model(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    done = [p.communicate(timeout=600) for p in procs]
    outs = [out.strip() for out, _ in done]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    # without a terminal: one line from the process that converted, no progress bars
    errs = "".join(err for _, err in done)
    assert errs.count("[model] materialising") == 1 and "it/s]" not in errs, errs[-2000:]
    target = tmp_path / "models" / "smollm2-135m-instruct"
    assert str(target) == outs[0]
    # only the finished model remains: no half-written temporary folders
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")) == [target.name]
    config = json.loads((target / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    assert materialise_embedded(tmp_path) == target  # reused, not rebuilt
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime

    import torch
    from transformers import AutoModelForCausalLM

    from ptalign_ray.chat_template import load_tokenizer, render_ids

    tok = load_tokenizer(str(target))
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    ids = render_ids(tok, [{"role": "user", "content": "What is the capital of France?"}])
    out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][len(ids) :])


def test_resolve_model_paths(tmp_path, tiny_model):
    assert resolve_model(str(tiny_model)) == str(tiny_model.resolve())
    assert resolve_model("someorg/some-model") == "someorg/some-model"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))
