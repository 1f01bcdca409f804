"""run_stage, the one skeleton of every stage: publish once, skip when finished, redo on --force or a
re-published input, publish nothing on an error. Toy stages in a temporary run directory, no Ray."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from ptalign_ray.config import PipelineConfig, parse_config
from ptalign_ray.runs import RunDir, RunDirLocked, StageConfigMismatch
from ptalign_ray.stages import Context, Stage, run_stage


def _toy(name: str = "toy", reads=(), calls: list | None = None, fail: bool = False, **kw) -> Stage:
    """A stage that writes data/rows.txt and counts its runs; with fail, raises after a checkpoint."""
    calls = [] if calls is None else calls

    def run(ctx: Context) -> dict:
        calls.append(ctx.stage)
        frame, stats = ctx.checkpointed("step", lambda: (pd.DataFrame({"x": [1, 2, 3]}), {"rows": 3}))
        if fail:
            raise RuntimeError("boom")
        (ctx.out / "data").mkdir()
        (ctx.out / "data" / "rows.txt").write_text(str(len(frame)))
        # like a real stage's timings: every publication has its own manifest, so its own identity
        return {"rows": len(frame), "resumed": bool(stats.get("resumed")), "published_ns": time.time_ns()}

    return Stage(name=name, command=name, help="a toy stage", run=run, reads=reads, **kw)


def _ctx(tmp_path, cfg: PipelineConfig | None = None, **kw) -> tuple[Context, list[str]]:
    said: list[str] = []
    ctx = Context(cfg or PipelineConfig(), RunDir(tmp_path / "run"), "model", log=said.append, **kw)
    return ctx, said


def _leftovers(run: RunDir) -> list[str]:
    return sorted(p.name for p in run.root.glob(".*") if ".tmp-" in p.name or ".trash-" in p.name)


def test_first_run_publishes_and_a_second_is_a_no_op(tmp_path):
    calls: list = []
    stage = _toy(calls=calls, config_slice=("refinement",))
    ctx, said = _ctx(tmp_path)
    manifest = run_stage(stage, ctx)
    assert calls == ["toy"] and ctx.run.is_done("toy")
    assert (ctx.run.stage_dir("toy") / "data" / "rows.txt").read_text() == "3"
    assert manifest["stage"] == "toy" and manifest["rows"] == 3 and "versions" in manifest
    assert "upstream" not in manifest  # it reads nothing
    assert not ctx.run.work_dir("toy").exists()  # checkpoints go once the stage is published

    assert run_stage(stage, ctx) == manifest  # finished with the same hash: not run again
    assert calls == ["toy"] and said[-1].startswith("[toy] already finished in")


def test_default_hash_covers_only_the_config_slice(tmp_path):
    stage = _toy(config_slice=("refinement",))
    ctx, _ = _ctx(tmp_path)
    run_stage(stage, ctx)
    other_section, _ = _ctx(tmp_path, parse_config({"synthesis": {"topics_per_domain": 3}}))
    assert run_stage(stage, other_section)["rows"] == 3  # not in the slice: still finished
    changed, _ = _ctx(tmp_path, parse_config({"refinement": {"rounds": 1}}))
    with pytest.raises(StageConfigMismatch, match="--force"):
        run_stage(stage, changed)
    forced, _ = _ctx(tmp_path, parse_config({"refinement": {"rounds": 1}}), force=True)
    redone = run_stage(stage, forced)
    assert run_stage(stage, changed) == redone  # finished with the new config now


def test_force_redoes_a_finished_stage(tmp_path):
    calls: list = []
    stage = _toy(calls=calls)
    ctx, _ = _ctx(tmp_path)
    first = run_stage(stage, ctx)
    forced, _ = _ctx(tmp_path, force=True)
    second = run_stage(stage, forced)
    assert calls == ["toy", "toy"] and second["config_hash"] == first["config_hash"]
    assert second["published_ns"] > first["published_ns"] and not _leftovers(ctx.run)


def test_a_re_published_upstream_redoes_the_stage(tmp_path):
    calls: list = []
    up, down = _toy("up"), _toy("down", reads=("up",), calls=calls)
    ctx, said = _ctx(tmp_path)
    with pytest.raises(FileNotFoundError, match="no finished up .* run `ptalign up` first"):
        run_stage(down, ctx)
    run_stage(up, ctx)
    first = run_stage(down, ctx)
    assert set(first["upstream"]) == {"up"} and calls == ["down"]
    assert run_stage(down, ctx) == first and calls == ["down"]

    forced, _ = _ctx(tmp_path, force=True)
    run_stage(up, forced)  # same config, new publication (`ptalign up --force`)
    again = run_stage(down, ctx)
    assert calls == ["down", "down"] and again["upstream"] != first["upstream"]
    assert any("[down] its input changed since it finished (up re-published): redoing it" == s for s in said)


def test_an_exception_publishes_nothing_and_keeps_the_checkpoints(tmp_path):
    ctx, _ = _ctx(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        run_stage(_toy(fail=True), ctx)
    assert not ctx.run.stage_dir("toy").exists() and not _leftovers(ctx.run)
    assert (ctx.run.work_dir("toy") / "step.parquet").is_file()
    assert run_stage(_toy(), ctx)["resumed"]  # the rerun takes the step from its checkpoint

    forced, _ = _ctx(tmp_path, force=True)
    with pytest.raises(RuntimeError):  # --force that fails: the old stage is gone (cleared), none half-built
        run_stage(_toy(fail=True), forced)
    assert not ctx.run.is_done("toy") and not _leftovers(ctx.run)


def test_the_run_directory_lock(tmp_path):
    ctx, _ = _ctx(tmp_path)
    held = ctx.run.lock("ptalign run")
    try:
        with pytest.raises(RunDirLocked):  # from Python, run_stage takes the lock itself
            run_stage(_toy(), ctx)
        mine, _ = _ctx(tmp_path, lock=held)  # a command that holds it runs its stages under it
        assert run_stage(_toy(), mine)["rows"] == 3
    finally:
        held.release()
    ctx.run.lock("free again").release()


def test_the_pipeline_stage_list():
    from ptalign_ray.artifacts import VARIANTS
    from ptalign_ray.pipeline import STAGES, commands

    assert list(commands()) == ["synthesize", "refine", "train", "evaluate"]
    assert [s.name for s in commands()["train"]] == [v.stage for v in VARIANTS.values()]
    assert len({s.name for s in STAGES}) == len(STAGES)
    cfg = PipelineConfig()
    assert [s.name for s in STAGES if s.wanted(cfg)] == [
        "synthesis", "refinement", "training", "training_mle_only", "evaluation",
    ]  # fmt: skip
