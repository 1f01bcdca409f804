"""The stage protocol: what a pipeline stage declares, and `run_stage`, which does for every stage
what used to be written once per stage module.

A stage says what it is called (its run-directory folder and its `ptalign` sub-command), which
finished stages it reads, which config sections it hashes, how to compute its outputs and how to
print its summary. `run_stage` does the rest, the same way for all of them: the config hash (over
the config slice and the upstream stages' `artifacts.upstream_key`), `--force`, skipping a stage
that finished with the same hash (and redoing one whose input was re-published), the run directory
lock, building the outputs in a temporary folder, writing the manifest and publishing the folder in
one rename. The stages themselves are listed, in order, in ptalign_ray/pipeline.py.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from ptalign_ray.artifacts import upstream_key
from ptalign_ray.config import PipelineConfig
from ptalign_ray.runs import MANIFEST, RunDir, RunLock, checkpointed, finished_stage, versions, write_json_atomic


@dataclass
class Context:
    """What a stage runs with. One per command: `ptalign run` loads the config, resolves the model and
    starts Ray once for all stages. `run_stage` hands each stage a copy with its own fields filled in
    (stage, config_hash, upstream, out)."""

    cfg: PipelineConfig
    run: RunDir
    model_path: str
    log: Callable[[str], None] = print
    force: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # a stage's own settings (refine: judge_url)
    lock: Optional[RunLock] = None  # the run directory lock, when the caller holds it for several stages
    # -- the stage being built (set by run_stage) --
    stage: str = ""
    config_hash: str = ""
    upstream: dict[str, str] = field(default_factory=dict)
    out: Optional[Path] = None  # the temporary folder the outputs go into; published on success

    @property
    def work(self) -> Path:
        """The stage's work folder: checkpoints of sub-steps, removed once the stage is published."""
        return self.run.work_dir(self.stage)

    def checkpointed(self, name: str, compute: Callable[[], tuple], key: Optional[str] = None):
        """A sub-step run once per key (default: the stage's config hash); see runs.checkpointed."""
        return checkpointed(self.work, name, key or self.config_hash, compute)


Reads = Union[tuple[str, ...], Callable[[Context], tuple[str, ...]]]


@dataclass(frozen=True)
class Option:
    """An extra command-line flag of a stage's sub-command; its value reaches the stage as
    ``ctx.options[dest]`` (None when not given, and always under `ptalign run`)."""

    flag: str
    dest: str
    help: str


@dataclass(frozen=True)
class Stage:
    """One pipeline stage. Only ``name``, ``command``, ``help`` and ``run`` are required.

    ``run(ctx)`` computes the outputs, writes them into ``ctx.out`` (data/ and whatever else the
    stage publishes; the manifest is written by run_stage) and returns the manifest's own entries.
    Stages with the same ``command`` run together, in list order (`ptalign train`: one per variant).
    """

    name: str  # the stage's folder in the run directory
    command: str  # `ptalign <command>`
    help: str  # the sub-command's help line
    run: Callable[[Context], dict]
    summary: Callable[[dict, Context], None] = lambda manifest, ctx: None
    reads: Reads = ()  # finished stages it reads: names, or a function of the context when that varies
    config_slice: tuple[str, ...] = ()  # config sections its outputs depend on (empty: the whole config)
    # The stage's own hash recipe, ``(ctx, upstream) -> hash``, instead of the default over
    # config_slice + upstream: the four original stages keep theirs, so finished runs stay finished.
    config_hash: Optional[Callable[[Context, dict], str]] = None
    wanted: Callable[[PipelineConfig], bool] = lambda cfg: True  # False: this config skips the stage
    options: tuple[Option, ...] = ()

    def upstream(self, ctx: Context) -> dict[str, str]:
        """The identity (config hash + publication) of every stage it reads; each must be finished."""
        names = self.reads(ctx) if callable(self.reads) else self.reads
        for name in names:
            if not ctx.run.is_done(name):
                raise FileNotFoundError(f"no finished {name} in {ctx.run.root}; run `ptalign {command_of(name)}` first")
        return {name: upstream_key(ctx.run, name) for name in names}

    def hash(self, ctx: Context, upstream: dict[str, str]) -> str:
        if self.config_hash is not None:
            return self.config_hash(ctx, upstream)
        key = {"config": ctx.cfg.section_hash(*self.config_slice), "upstream": upstream}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def run_stage(stage: Stage, ctx: Context) -> dict:
    """Runs (or resumes, or skips) one stage; returns its manifest as stored.

    A stage finished with the same hash and the same upstream is a no-op; with another upstream (a
    re-published input) it is redone; with another config it is an error until --force. An
    exception inside ``stage.run`` publishes nothing and keeps the sub-step checkpoints.
    """
    with _locked(ctx, stage):
        upstream = stage.upstream(ctx)
        chash = stage.hash(ctx, upstream)
        if ctx.force:
            ctx.run.clear(stage.name)
        reads_nothing = not callable(stage.reads) and not stage.reads
        done = finished_stage(ctx.run, stage.name, chash, ctx.log, None if reads_nothing else upstream)
        if done is not None:
            return done
        with ctx.run.building(stage.name) as out:
            own = stage.run(replace(ctx, stage=stage.name, config_hash=chash, upstream=upstream, out=out))
            manifest = {"stage": stage.name, "config_hash": chash}
            if not reads_nothing:
                manifest["upstream"] = upstream
            write_json_atomic(out / MANIFEST, {**manifest, **own, "versions": versions()})
        return ctx.run.manifest(stage.name)  # as stored (JSON), so a rerun returns exactly the same


@contextmanager
def _locked(ctx: Context, stage: Stage) -> Iterator[None]:
    """The run directory lock for the stage: the caller's (a command holds it throughout), else taken
    here for this stage only (a stage run from Python)."""
    if ctx.lock is not None:
        yield
        return
    lock = ctx.run.lock(f"ptalign {stage.command} (from Python)")
    try:
        yield
    finally:
        lock.release()


def command_of(stage: str) -> str:
    """The `ptalign` sub-command that builds a stage folder (the name itself if no stage has it)."""
    from ptalign_ray.pipeline import STAGES  # the stage modules import this module

    return next((s.command for s in STAGES if s.name == stage), stage)
