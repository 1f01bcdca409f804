"""CLI error handling: bad configs and seed files exit 2 with a message that says what to fix."""

import os
import subprocess
import sys

import yaml


def _ptalign(*args):
    return subprocess.run([sys.executable, "-m", "ptalign_ray", *args], capture_output=True, text=True, timeout=120)


def test_validate_default_config():
    out = _ptalign("validate")
    assert out.returncode == 0, out.stderr
    assert "seeds ok: 40 annotations" in out.stdout


def test_bad_config_exits_2_naming_the_field(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"engine": {"concurency": 2}}))
    out = _ptalign("validate", "--config", str(cfg))
    assert out.returncode == 2
    assert "engine.concurency" in out.stderr and "unknown key" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_seed_file_exits_2(tmp_path):
    seeds = tmp_path / "seeds.yaml"
    seeds.write_text("domains: []\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"seeds": str(seeds)}))
    out = _ptalign("synthesize", "--config", str(cfg), "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 2
    assert "invalid seed file" in out.stderr and "domains" in out.stderr
    assert not (tmp_path / "run").exists()


def test_config_schema_lists_every_field(capsys):
    from ptalign_ray.cli import main
    from ptalign_ray.config import config_fields

    assert main(["config-schema"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert set(lines) == {path for path, _, _ in config_fields()}
    assert "float" in lines["training.alpha"] and "1.0" in lines["training.alpha"]
    assert "unlikelihood" in lines["training.alpha"]
    assert '"offline"' in lines["judge.backend"]
    assert "0.3" in lines["synthesis.topic_sampling.temperature"]


def test_config_schema_json(capsys):
    import json

    from ptalign_ray.cli import main

    assert main(["config-schema", "--json"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"training", "judge", "engine"} <= set(schema["properties"])
    assert schema["$defs"]["TrainingConfig"]["properties"]["alpha"]["description"]


def test_config_schema_needs_no_ray_and_no_model():
    code = (
        "import sys; from ptalign_ray.cli import main; rc = main(['config-schema']); "
        "heavy = [m for m in ('ray', 'vllm', 'torch', 'transformers') if m in sys.modules]; "
        "sys.exit(f'imported {heavy}' if heavy else rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_second_command_on_a_busy_run_dir_exits_2_naming_the_holder(tmp_path):
    from ptalign_ray.runs import RunDir

    held = RunDir(tmp_path / "run").lock("ptalign run --run-dir run")
    try:
        out = _ptalign("synthesize", "--run-dir", str(tmp_path / "run"))
    finally:
        held.release()
    assert out.returncode == 2, out.stderr
    assert "is in use by another ptalign command" in out.stderr and f"pid {os.getpid()}" in out.stderr
    assert "`ptalign run --run-dir run`" in out.stderr and "Traceback" not in out.stderr


def test_a_ctrl_c_a_library_swallowed_still_ends_the_command_with_130(monkeypatch, capsys, request):
    """pydantic-core turns a KeyboardInterrupt raised while an import builds a model into a
    SchemaError, which importing code may catch: the next console line raises it again."""
    import signal

    from ptalign_ray import cli

    said = []

    def swallowing(args):
        try:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C inside a library...
        except KeyboardInterrupt:
            pass  # ...that loses it
        said.append("went on")
        cli._log("[refinement] the next line")
        said.append("not reached")
        return 0

    monkeypatch.setattr(cli, "cmd_validate", swallowing)
    # as in a fresh `ptalign` process: earlier tests of the suite (Ray, vLLM) may leave their own handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    assert cli.main(["validate"]) == 130
    assert said == ["went on"] and "ptalign: interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored

    def wrapped(args):  # the interrupted code ends with another exception: still 130, not a traceback
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as err:
            raise RuntimeError("Error building validator: KeyboardInterrupt") from err

    monkeypatch.setattr(cli, "cmd_validate", wrapped)
    assert cli.main(["validate"]) == 130


def test_a_run_that_lost_a_node_exits_75_naming_the_command_that_resumes(monkeypatch, capsys, tmp_path):
    """Ray's own error (here a node that died under a Ray Data task) becomes one line that says to run
    the same command again; the traceback goes to the run's log only."""
    import ray.exceptions

    from ptalign_ray import cli

    def lost(args):
        cli._open_run_log(args.run_dir)
        died = ray.exceptions.NodeDiedError("node 7f00 died")
        raise RuntimeError("the dataset failed") from ray.exceptions.RayTaskError("answer", "Traceback ...", died)

    monkeypatch.setattr(cli, "cmd_stage", lost)
    monkeypatch.setattr(cli, "_LOG_FILE", [])
    run_dir = str(tmp_path / "run")
    assert cli.main(["synthesize", "--run-dir", run_dir]) == cli.EXIT_RESUMABLE == 75
    err = capsys.readouterr().err
    assert "NodeDiedError: node 7f00 died" in err and "Traceback" not in err
    assert f"run the same command to resume: ptalign synthesize --run-dir {run_dir}" in err
    assert "Traceback" in (tmp_path / "run" / "logs" / "ptalign.log").read_text()

    def bug(args):
        raise RuntimeError("a bug") from ValueError("not Ray's")

    monkeypatch.setattr(cli, "cmd_stage", bug)
    try:
        cli.main(["synthesize", "--run-dir", run_dir])
    except RuntimeError as e:
        assert str(e) == "a bug"  # anything else still raises with its traceback
    else:
        raise AssertionError("a bug was reported as a lost node")


def test_engines_are_created_while_the_embedded_model_is_materialised(monkeypatch, tmp_path):
    """A generating command on a machine without the materialised model creates its engine actors
    first (they import vLLM meanwhile); `train`, or a machine that has the model, does not."""
    import argparse

    from ptalign_ray import cli, generation, models, ray_runtime

    calls = []
    monkeypatch.setenv("PTALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(ray_runtime, "init_ray", lambda cfg: calls.append("ray"))
    monkeypatch.setattr(models, "resolve_model", lambda name: calls.append("resolve") or "model-dir")
    monkeypatch.setattr(generation, "create_engines_early", lambda engine, model: calls.append("engines"))
    monkeypatch.setattr(cli, "_open_run_log", lambda run_dir: None)

    def context(command):
        calls.clear()
        args = argparse.Namespace(command=command, config=None, run_dir=str(tmp_path / "run"), force=False)
        try:
            assert cli._stage_context(args).model_path == "model-dir"
        finally:
            cli._release_locks()
        return calls

    assert context("run")[:3] == ["ray", "engines", "resolve"]  # (init_ray again after: a no-op)
    assert context("evaluate")[:3] == ["ray", "engines", "resolve"]
    assert context("train") == ["resolve", "ray"]  # a bad model path fails before Ray starts
    done = models._embedded_dir()
    done.mkdir(parents=True)
    (done / models._COMPLETE).write_text("ok\n")
    assert context("run") == ["resolve", "ray"]
