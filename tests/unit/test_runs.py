"""Run directory guarantees: one command at a time, no partial stage after a crash, checkpoints that
cannot be mistaken for another step's output, private modes, leftovers of crashed runs removed."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ptalign_ray import runs
from ptalign_ray.runs import MANIFEST, RunDir, RunDirLocked, checkpointed, read_json, write_json_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _build(run: RunDir, stage: str, gen: int, parts: int = 3) -> None:
    with run.building(stage) as tmp:
        (tmp / "data").mkdir()
        for i in range(parts):
            (tmp / "data" / f"part-{i}.txt").write_text(str(gen) * 2000)
        write_json_atomic(tmp / MANIFEST, {"gen": gen, "parts": parts})


def _stage_gen(run: RunDir, stage: str):
    """The generation of a complete stage, None when there is none; fails on a partial one."""
    folder = run.stage_dir(stage)
    if not folder.exists():
        return None
    manifest = read_json(folder / MANIFEST)
    files = sorted((folder / "data").iterdir())
    assert len(files) == manifest["parts"], f"partial stage: {len(files)} of {manifest['parts']} parts"
    assert all(f.read_text() == str(manifest["gen"]) * 2000 for f in files), "parts of another generation"
    return manifest["gen"]


def _leftovers(run: RunDir) -> list[str]:
    found = [*run.root.glob(".*.tmp-*"), *run.root.glob(".*.trash-*"), *run.root.glob(".work/*/.*.tmp-*")]
    return sorted(p.name for p in found)


# -- lock ----------------------------------------------------------------------------------------


def test_second_lock_fails_fast_naming_the_holder(tmp_path):
    run = RunDir(tmp_path / "run")
    held = run.lock("ptalign run --run-dir x")
    t0 = time.perf_counter()
    with pytest.raises(RunDirLocked) as err:
        RunDir(tmp_path / "run").lock("ptalign refine --run-dir x")
    assert time.perf_counter() - t0 < 1.0
    msg = str(err.value)
    assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg
    assert "`ptalign run --run-dir x`" in msg and "since 20" in msg and "--run-dir" in msg
    held.release()
    RunDir(tmp_path / "run").lock("again").release()  # released: free again


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    root = tmp_path / "run"
    code = f"from ptalign_ray.runs import RunDir; RunDir({str(root)!r}).lock('ptalign train'); print('locked', flush=True); import time; time.sleep(60)"  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLocked, match=f"pid {proc.pid} "):
            RunDir(root).lock("ptalign train")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lock = RunDir(root).lock("ptalign train")  # the stale holder file does not matter
    assert json.loads((root / ".lock").read_text())["pid"] == os.getpid()
    lock.release()


# -- crash safety of building() / clear() --------------------------------------------------------


def test_exception_inside_building_keeps_the_old_stage(tmp_path):
    run = RunDir(tmp_path / "run")
    _build(run, "stage", 1)
    with pytest.raises(RuntimeError, match="boom"):
        with run.building("stage") as tmp:
            (tmp / "data").mkdir()
            (tmp / "data" / "part-0.txt").write_text("2" * 2000)
            write_json_atomic(tmp / MANIFEST, {"gen": 2, "parts": 3})
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="built no manifest"):
        with run.building("stage") as tmp:
            (tmp / "data").mkdir()
    assert _stage_gen(run, "stage") == 1 and _leftovers(run) == []


def test_crash_while_deleting_leaves_no_partial_stage(tmp_path, monkeypatch):
    """Killed in the middle of removing the old stage (clear or replace): the stage is gone or new."""
    run = RunDir(tmp_path / "run")
    _build(run, "stage", 1)
    (run.work_dir("stage")).mkdir(parents=True)

    def killed(path, ignore_errors=False):
        for part in Path(path).rglob("part-0.txt"):  # got part of the way through
            part.unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        run.clear("stage")
    assert _stage_gen(run, "stage") is None and not run.is_done("stage")
    monkeypatch.undo()
    _build(run, "stage", 2)
    monkeypatch.setattr(runs.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        _build(run, "stage", 3)  # the new stage is in place, the old one half-deleted in the trash
    assert _stage_gen(run, "stage") == 3
    monkeypatch.undo()
    assert _leftovers(run)  # trash left by the "crash" ...
    run.lock("tidy").release()
    assert _leftovers(run) == [] and _stage_gen(run, "stage") == 3  # ... removed by the next command


def _writer(root: str, gen: int) -> None:
    """Replaces a stage again and again (every 8th time after clear(), as --force does) until killed."""
    run = RunDir(root)
    run.lock("writer")
    while True:
        gen += 1
        if gen % 8 == 0:
            run.clear("stage")
        _build(run, "stage", gen, parts=5)


def test_sigkill_at_random_points_never_leaves_a_partial_stage(tmp_path):
    run = RunDir(tmp_path / "run")
    _build(run, "stage", 0, parts=5)
    rng, seen, last = random.Random(0), [], 0
    fork = multiprocessing.get_context("fork")
    for _ in range(12):
        proc = fork.Process(target=_writer, args=(str(run.root), last))
        proc.start()
        time.sleep(rng.uniform(0.05, 0.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        gen = _stage_gen(run, "stage")  # asserts the stage is whole (or absent)
        assert gen is None or gen >= last  # the old stage or a newer one
        last = gen if gen is not None else last  # absent: cleared (as --force does)
        seen.append(gen)
    print("stage generation after each kill:", seen)
    assert sum(g is not None for g in seen) >= 4 and last > 0  # it made progress and was mostly there
    run.lock("tidy").release()
    assert _leftovers(run) == []


# -- checkpoints ---------------------------------------------------------------------------------


def _step(calls: list):
    def compute():
        calls.append(1)
        return pd.DataFrame({"x": [1, 2, 3]}), {"rows": 3}

    return compute


def test_checkpoint_resumes_only_with_a_matching_meta(tmp_path):
    work, calls = tmp_path / ".work" / "stage", []
    df, stats = checkpointed(work, "step", "h1", _step(calls))
    df, stats = checkpointed(work, "step", "h1", _step(calls))
    assert len(calls) == 1 and stats["resumed"] and df["x"].tolist() == [1, 2, 3]
    meta = read_json(work / "step.json")
    assert meta["rows"] == 3 and len(meta["sha256"]) == 64

    # killed between the parquet and its meta: another step's parquet is never taken for this one
    pd.DataFrame({"x": [9]}).to_parquet(work / "step.parquet")
    df, stats = checkpointed(work, "step", "h1", _step(calls))
    assert len(calls) == 2 and "resumed" not in stats and df["x"].tolist() == [1, 2, 3]

    (work / "step.json").unlink()  # parquet without meta
    checkpointed(work, "step", "h1", _step(calls))
    assert len(calls) == 3
    write_json_atomic(work / "step.json", {"config_hash": "h1", "stats": {}})  # meta of an older version
    checkpointed(work, "step", "h1", _step(calls))
    assert len(calls) == 4
    checkpointed(work, "step", "h2", _step(calls))  # another config
    assert len(calls) == 5


# -- leftovers and permissions -------------------------------------------------------------------


def test_lock_removes_leftovers_of_crashed_runs(tmp_path):
    run = RunDir(tmp_path / "run")
    _build(run, "synthesis", 1)
    for name in (".training.tmp-abc123", ".refinement.trash-0f0f"):
        (run.root / name / "merged").mkdir(parents=True)
        (run.root / name / "merged" / "model.safetensors").write_bytes(b"0" * 1000)
    work = run.work_dir("refinement")
    work.mkdir(parents=True)
    (work / ".round_0.parquet.tmp-xyz").write_bytes(b"partial")
    (work / "round_0.parquet").write_bytes(b"kept")
    assert len(_leftovers(run)) == 3
    run.lock("ptalign refine").release()
    assert _leftovers(run) == []
    assert (work / "round_0.parquet").read_bytes() == b"kept" and _stage_gen(run, "synthesis") == 1


def test_stage_and_work_files_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        run = RunDir(tmp_path / "run")
        legacy = run.root / "evaluation"  # a stage folder of an older version
        legacy.mkdir(parents=True, mode=0o755)
        (legacy / MANIFEST).write_text("{}")
        run.lock("ptalign synthesize").release()
        assert _mode(legacy) == 0o700 and _mode(run.root / ".work") == 0o700
        checkpointed(run.work_dir("synthesis"), "topics", "h", _step([]))
        with run.building("synthesis") as tmp:
            runs.write_parquet_atomic(pd.DataFrame({"x": [1]}), tmp / "data" / "triplets.parquet")
            (tmp / "plots").mkdir(mode=0o755)
            (tmp / "plots" / "a.png").write_bytes(b"png")  # written plainly: 0644 under this umask
            os.chmod(tmp / "plots" / "a.png", 0o644)
            write_json_atomic(tmp / MANIFEST, {})
            checkpointed(run.work_dir("refinement"), "round_0", "h", _step([]))
            work_modes = {p.name: _mode(p) for p in run.work_dir("refinement").parent.rglob("*")}
        assert set(work_modes.values()) <= {0o700, 0o600} and len(work_modes) >= 5
        stage = run.stage_dir("synthesis")
        modes = {str(p.relative_to(stage)): _mode(p) for p in [stage, *stage.rglob("*")]}
        assert all(m == (0o700 if (stage / p).is_dir() else 0o600) for p, m in modes.items()), modes
        assert _mode(run.root / ".lock") == 0o600
    finally:
        os.umask(old)


def test_parquet_schema_does_not_depend_on_how_the_frame_holds_its_strings(tmp_path):
    """A step resumed from its checkpoint hands on a frame read back from Parquet (pandas ``str``
    columns) where a fresh step hands on one built in memory (object or Arrow strings): the
    published schema must be the same either way. bench/chaos_kill.py found the evaluation's `rid`
    as string after an uninterrupted run and as large_string after a resumed one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fresh = pd.DataFrame({"rid": pd.Series(["a#0", "b#1"], dtype=object), "tags": [["x"], ["y", "z"]], "n": [1, 2]})
    frames = {
        "fresh": fresh,
        "arrow": fresh.astype({"rid": pd.ArrowDtype(pa.string())}),
        "str": fresh.astype({"rid": "str"}),
    }
    for name, df in frames.items():
        runs.write_parquet_atomic(df, tmp_path / f"{name}.parquet")
    runs.write_parquet_atomic(pd.read_parquet(tmp_path / "fresh.parquet"), tmp_path / "resumed.parquet")
    schemas = {name: pq.read_schema(tmp_path / f"{name}.parquet") for name in [*frames, "resumed"]}
    assert len(set(schemas.values())) == 1, schemas
    assert schemas["fresh"].field("rid").type == pa.large_string()
    assert schemas["fresh"].field("tags").type.value_type == pa.large_string()
