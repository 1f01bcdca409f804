"""`ptalign` command line: one sub-command per pipeline stage, plus `run` for the whole pipeline.

The same entry points are what jobs/ hands to `ray job submit`. Errors in configs or seed files
exit with code 2 and a message that says what to fix; a run that lost part of its Ray cluster (a node,
a worker, Ray Train out of restarts) exits with 75 and a message naming the command that resumes it;
toxic text is never printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from ptalign_ray.config import ConfigError, PipelineConfig, load_config
from ptalign_ray.refinement.client import JudgeUnavailable
from ptalign_ray.refinement.export import ExportRefused
from ptalign_ray.runs import RunDir, RunDirLocked, RunLock, StageConfigMismatch
from ptalign_ray.seeds import SeedError
from ptalign_ray.stages import Context, Stage, run_stage

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def _config(path: str | None) -> PipelineConfig:
    """The given config; without one, configs/default.yaml of a source checkout, else built-in defaults."""
    if path is None:
        return load_config(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else PipelineConfig()
    return load_config(path)


_GENERATE = ("run", "synthesize", "refine", "evaluate")  # commands that start a generation engine


def _stage_context(args) -> Context:
    """What the stage commands need, made once per command (`run` too): the config, the run
    directory (locked), the model path, Ray, and the stages' own options from the command line."""
    from ptalign_ray.models import needs_materialising, resolve_model
    from ptalign_ray.pipeline import STAGES
    from ptalign_ray.ray_runtime import init_ray
    from ptalign_ray.seeds import load_seeds

    cfg = _config(args.config)
    load_seeds(cfg.seeds)  # fail on a bad seed file before loading any model
    run = RunDir(args.run_dir)
    lock = _hold_lock(run)
    _open_run_log(args.run_dir)
    if args.command in _GENERATE and needs_materialising(cfg.model.name_or_path):
        from ptalign_ray.generation import create_engines_early

        init_ray(cfg.ray)
        create_engines_early(cfg.engine, cfg.model)  # vLLM's import overlaps the materialisation
    model_path = resolve_model(cfg.model.name_or_path)  # a bad model path fails before Ray starts
    init_ray(cfg.ray)
    options = {o.dest: getattr(args, o.dest, None) for stage in STAGES for o in stage.options}
    return Context(cfg, run, model_path, log=_log, force=args.force, options=options, lock=lock)


_LOCKS: dict[Path, RunLock] = {}  # the run directory this command holds


def _hold_lock(run: RunDir) -> RunLock:
    """One command at a time per run directory, held until main() returns (or the process dies).

    Only the stage commands and `run` take it: `export`, `serve` and `validate` only read (a stage
    folder appears and disappears in one rename, so they never see a partial one).
    """
    if run.root not in _LOCKS:
        _LOCKS[run.root] = run.lock(shlex.join(["ptalign", *sys.argv[1:]]))
    return _LOCKS[run.root]


def _release_locks() -> None:
    while _LOCKS:
        _LOCKS.popitem()[1].release()


_LOG_FILE: list = []  # the run directory's log (logs/ptalign.log), once a stage command opened it


_SIGINT = {"received": False, "pending": False}  # see _on_sigint


def _on_sigint(signum, frame) -> None:
    """Ctrl-C: KeyboardInterrupt as usual, and remembered. Some libraries lose the KeyboardInterrupt
    (pydantic-core turns one raised while an import builds a model into a SchemaError, which the
    importing code may catch): then the next console line raises it again, and main() exits 130
    whatever exception the interrupted code ended with. Seen with `ptalign run` interrupted just
    as refinement imported its judge app."""
    _SIGINT["received"] = _SIGINT["pending"] = True
    raise KeyboardInterrupt


def _log(msg: str) -> None:
    """The project's own console line, also appended to the run directory's log."""
    if _SIGINT["pending"]:  # a Ctrl-C that some library swallowed (see _on_sigint)
        _SIGINT["pending"] = False
        raise KeyboardInterrupt
    _write_line(msg)


def _write_line(msg: str) -> None:
    """A console line without the swallowed-Ctrl-C check: for `ptalign serve`, where Ctrl-C is the way
    to stop and its own KeyboardInterrupt handler prints the shutdown lines."""
    print(msg, flush=True)
    for f in _LOG_FILE:
        f.write(msg + "\n")
        f.flush()


def _open_run_log(run_dir: str) -> None:
    if _LOG_FILE:
        return
    path = Path(run_dir) / "logs" / "ptalign.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    _LOG_FILE.append(open(path, "a", encoding="utf-8"))
    _log(f"[ptalign] {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv[1:])} (log: {path}; Ray's worker logs, "
         "vLLM and Ray Train included, are in /tmp/ray/session_latest/logs; --verbose prints them here)")  # fmt: skip


def _run_stages(stages: list[Stage], ctx: Context) -> None:
    """Runs (or skips as finished) each stage the config wants, and prints its summary."""
    for stage in stages:
        if stage.wanted(ctx.cfg):
            stage.summary(run_stage(stage, ctx), ctx)


def cmd_stage(args) -> int:
    """One stage command (`ptalign synthesize`, `refine`, `train`, `evaluate`): its stages, in order."""
    from ptalign_ray.pipeline import commands

    _run_stages(commands()[args.command], _stage_context(args))
    return 0


def cmd_export(args) -> int:
    from ptalign_ray.artifacts import load_benign
    from ptalign_ray.refinement.export import export
    from ptalign_ray.refinement.stage import load_refined

    run = RunDir(args.run_dir)
    benign = load_benign(run, "refinement")
    n = export(load_refined(run), Path(args.out), args.format, include_toxic=args.include_toxic, benign=benign)
    _log(f"wrote {n} {args.format} records to {Path(args.out).resolve()}")
    return 0


def cmd_serve(args) -> int:
    """The aligned model (OpenAI API) and the judge on Ray Serve until Ctrl-C; logic in ptalign_ray/serving/."""
    from ptalign_ray.serving.app import serve_forever, with_overrides

    cfg = with_overrides(_config(args.config), mode=args.mode, host=args.host, port=args.port)
    return serve_forever(cfg, args.run_dir, log=_write_line)


def cmd_run(args) -> int:
    """Every stage command in pipeline order (ptalign_ray/pipeline.py: synthesize -> refine -> train ->
    evaluate), then serve with --serve. A finished stage with the same config is skipped, so a run
    interrupted anywhere resumes at the first unfinished stage."""
    from ptalign_ray.pipeline import commands

    t0 = time.perf_counter()
    ctx = _stage_context(args)  # one config, one model, one Ray for every stage
    seconds: dict[str, float] = {}
    for name, stages in commands().items():
        _log(f"\n[run] stage {name}")
        start = time.perf_counter()
        _run_stages(stages, ctx)
        seconds[name] = time.perf_counter() - start
    from ptalign_ray.generation import ENGINE_LOADS, release_engines

    release_engines()
    report = RunDir(args.run_dir).stage_dir("evaluation") / "report.html"
    per_stage = ", ".join(f"{name} {s:.0f}s" for name, s in seconds.items())
    _log(f"\n[run] all stages done in {time.perf_counter() - t0:.0f}s ({per_stage})")
    starts = [e for e in ENGINE_LOADS if not e.swapped]
    swaps = [e for e in ENGINE_LOADS if e.swapped]
    named = ", ".join(f"{Path(e.path).parent.name}/{Path(e.path).name} {e.seconds:.0f}s" for e in starts) or "none"
    loaded = f"; weights loaded in place {len(swaps)}x ({sum(e.seconds for e in swaps):.1f}s in all)" if swaps else ""
    _log(f"[run] engine starts: {len(starts)} ({named}){loaded}; an engine is reused by every later pass over its "
         "model, and over a model with its architecture and tokenizer by loading that model's weights")  # fmt: skip
    _log(f"[run] report: {report.resolve()}")
    if getattr(args, "serve", False):
        return cmd_serve(args)
    return 0


def cmd_validate(args) -> int:
    from ptalign_ray.seeds import load_seeds

    cfg = _config(args.config)
    seeds = load_seeds(cfg.seeds)
    _log(f"config ok: {args.config or '(built-in defaults)'}; seeds ok: {seeds.annotation_count} annotations")
    return 0


def _type_name(annotation) -> str:
    """A config field's type as a reader writes it: ``int | tuple[int, int]``, ``'cpu' | 'gpu'``."""
    import types
    from typing import Annotated, Literal, Union, get_args, get_origin

    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def cmd_config_schema(args) -> int:
    """Every config field as `dotted.path  type  default  description`, grouped by section (or, with
    --json, the JSON schema). Needs no Ray and no model."""
    import json

    from pydantic import BaseModel
    from pydantic_core import to_jsonable_python

    from ptalign_ray.config import REQUIRED, config_fields

    if args.json:
        return _print_all(json.dumps(PipelineConfig.model_json_schema(), indent=2))
    groups: dict[str, list[tuple[str, str, str, str]]] = {"": []}  # top-level settings first, then sections
    for path, field, default in config_fields():
        if isinstance(default, BaseModel):
            shown = "(section)"
        elif default is REQUIRED:
            shown = REQUIRED
        else:
            shown = json.dumps(to_jsonable_python(default))
        top = path.split(".")[0]
        group = top if "." in path or isinstance(default, BaseModel) else ""
        groups.setdefault(group, []).append((path, _type_name(field.annotation), shown, field.description or ""))
    rows = [row for lines in groups.values() for row in lines]
    wp, wt = max(len(r[0]) for r in rows), min(24, max(len(r[1]) for r in rows))  # a long type overflows
    blocks = ["\n".join(f"{p:<{wp}}  {t:<{wt}}  {d}  {desc}" for p, t, d, desc in lines) for lines in groups.values()]
    return _print_all("\n\n".join(b for b in blocks if b))


def _print_all(text: str) -> int:
    """Prints to stdout; a reader that closes the pipe early (`| head`) is not an error."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ptalign", description=__doc__.splitlines()[0])
    p.add_argument("--verbose", "-v", action="store_true", help="also print Ray's, vLLM's and Ray Train's own output")
    sub = p.add_subparsers(dest="command", required=True)

    def stage(name: str, fn, help_: str):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", "-c", default=None, help="pipeline YAML (default: configs/default.yaml)")
        sp.add_argument("--run-dir", "-r", default="runs/default", help="run directory (default: runs/default)")
        sp.add_argument("--force", action="store_true", help="redo the stage even if it has finished")
        sp.set_defaults(fn=fn)
        return sp

    from ptalign_ray.pipeline import commands

    for command, stages in commands().items():  # one sub-command per stage command, in pipeline order
        sp = stage(command, cmd_stage, stages[0].help)
        for option in dict.fromkeys(o for s in stages for o in s.options):
            sp.add_argument(option.flag, dest=option.dest, default=None, help=option.help)
    e = sub.add_parser("export", help="refined dataset as JSONL: sft (positives) or preference (needs --include-toxic)")
    e.add_argument("--run-dir", "-r", default="runs/default")
    e.add_argument("--format", choices=["sft", "preference"], default="sft")
    e.add_argument("--out", "-o", required=True, help="output .jsonl path")
    e.add_argument("--include-toxic", action="store_true", help="allow writing the toxic responses (preference format)")
    e.set_defaults(fn=cmd_export)
    sv = sub.add_parser("serve", help="serve the trained model (OpenAI API) and the safety judge on Ray Serve")
    sv.add_argument("--config", "-c", default=None, help="pipeline YAML (default: configs/default.yaml)")
    sv.add_argument("--run-dir", "-r", default="runs/default", help="run directory with a finished training stage")
    sv.add_argument("--mode", choices=["merged", "lora"], default=None, help="override serving.mode")
    sv.add_argument("--host", default=None, help="override serving.host (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=None, help="override serving.port (default 8000)")
    sv.set_defaults(fn=cmd_serve)
    rn = stage("run", cmd_run, "the whole pipeline, resuming at the first unfinished stage")
    rn.add_argument(
        "--serve", action="store_true", help="serve the aligned model and the judge when done (Ctrl-C stops)"
    )
    rn.set_defaults(mode=None, host=None, port=None)
    v = sub.add_parser("validate", help="check a config and its seed file without running anything")
    v.add_argument("--config", "-c", default=None)
    v.set_defaults(fn=cmd_validate)
    cs = sub.add_parser(
        "config-schema", help="list every config field: dotted path, type, default, description (no Ray, no model)"
    )
    cs.add_argument("--json", action="store_true", help="print the JSON schema of the config instead")
    cs.set_defaults(fn=cmd_config_schema)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ["PTALIGN_VERBOSE"] = "1"
    # only over Python's own handler (not over an ignored SIGINT, nor off the main thread)
    own_handler = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if own_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    _SIGINT.update(received=False, pending=False)
    args.command_line = shlex.join(["ptalign", *(sys.argv[1:] if argv is None else argv)])  # what resumes it
    try:
        return _run_command(args)
    except KeyboardInterrupt:
        return _interrupted()
    except Exception:
        if _SIGINT["received"]:  # the interrupted code ended with another exception
            return _interrupted()
        raise
    finally:
        _release_locks()
        if own_handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _run_command(args) -> int:
    """The sub-command; user errors exit 2 with one line."""
    try:
        return args.fn(args)
    except (
        ConfigError,
        SeedError,
        FileNotFoundError,
        StageConfigMismatch,
        RunDirLocked,
        JudgeUnavailable,
        ExportRefused,
        ValueError,
    ) as err:
        if _SIGINT["received"]:  # a Ctrl-C that surfaced as another error
            raise KeyboardInterrupt from err
        print(f"ptalign: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        lost = _lost_cluster_part(err)
        if lost is None or _SIGINT["received"]:
            raise
        return _resumable(err, lost, args.command_line)


EXIT_RESUMABLE = 75  # sysexits' EX_TEMPFAIL: the same command, run again, resumes


def _lost_cluster_part(err: Exception):
    if "ray" not in sys.modules:  # nothing of Ray ran
        return None
    from ptalign_ray.ray_runtime import lost_cluster_part

    return lost_cluster_part(err)


def _resumable(err: Exception, lost: BaseException, command: str) -> int:
    """A node, worker or object of the Ray cluster was lost (or Ray Train ran out of restarts): one
    message naming the command that resumes, the traceback in the run's log only."""
    import traceback

    first = (str(lost).strip().splitlines() or [""])[0][:300]
    msg = (
        f"ptalign: error: the Ray cluster lost part of this run ({type(lost).__name__}: {first}). Finished stages, "
        f"sub-steps and training checkpoints are kept: once the cluster has room again (a lost node replaced), "
        f"run the same command to resume: {command}"
    )
    print(msg, file=sys.stderr)
    for f in _LOG_FILE:
        f.write("".join(traceback.format_exception(err)) + msg + "\n")
        f.flush()
    return EXIT_RESUMABLE


def _interrupted() -> int:
    print("ptalign: interrupted; finished steps are kept, rerun the same command to resume", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
