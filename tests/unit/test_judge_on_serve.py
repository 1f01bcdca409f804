"""`ptalign refine` and `ptalign serve` remove only what they started on Ray Serve: their app, and Serve itself only
when Serve was not running before and nothing else runs on it (serve.shutdown() would end every app
on a shared cluster)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray import serve

from ptalign_ray.config import JudgeConfig
from ptalign_ray.judging import app


class FakeServe:
    def __init__(self, running: bool, apps=()):
        self.running, self.apps, self.calls = running, set(apps), []

    def status(self):
        return SimpleNamespace(
            proxies={"node": "HEALTHY"} if self.running else {}, applications=dict.fromkeys(self.apps)
        )

    def start_judge(self, cfg, policy_model_path=None, engine=None, seeds=None):
        self.running = True
        self.apps.add(app.APP_NAME)
        return app.judge_url(cfg)

    def delete(self, name, _blocking=True):
        self.calls.append(("delete", name))
        self.apps.discard(name)

    def shutdown(self):
        self.calls.append(("shutdown",))
        self.running, self.apps = False, set()


@pytest.fixture
def fake(monkeypatch):
    def make(running, apps=()):
        f = FakeServe(running, apps)
        for name in ("status", "delete", "shutdown"):
            monkeypatch.setattr(serve, name, getattr(f, name))
        monkeypatch.setattr(app, "start_judge", f.start_judge)
        return f

    return make


def test_serve_started_here_is_shut_down(fake):
    f = fake(running=False)
    with app.judge_on_serve(JudgeConfig(port=8001)) as url:
        assert url == "http://127.0.0.1:8001"
    assert f.calls == [("delete", "judge"), ("shutdown",)]


def test_other_apps_on_a_shared_serve_are_left_running(fake):
    f = fake(running=True, apps={"chat"})
    with pytest.raises(KeyboardInterrupt):
        with app.judge_on_serve(JudgeConfig()):
            raise KeyboardInterrupt
    assert f.calls == [("delete", "judge")] and f.apps == {"chat"} and f.running


def test_an_app_deployed_meanwhile_keeps_serve_up(fake):
    f = fake(running=False)
    with app.judge_on_serve(JudgeConfig()):
        f.apps.add("someone-else")
    assert f.calls == [("delete", "judge")] and f.running


def test_ptalign_serve_on_a_shared_serve_removes_only_its_own_app(fake, monkeypatch):
    """`ptalign serve` stopped (Ctrl-C / SIGTERM) on a cluster where Serve already ran other apps."""
    import ray

    from ptalign_ray import ray_runtime
    from ptalign_ray.config import PipelineConfig
    from ptalign_ray.serving import app as serving_app

    f = fake(running=True, apps={"chat"})

    def start(cfg, run_dir, mode=None, log=print):
        f.apps.add(serving_app.APP_NAME)
        raise KeyboardInterrupt  # stopped right after it came up

    monkeypatch.setattr(ray_runtime, "init_ray", lambda cfg, quiet=None: None)
    monkeypatch.setattr(serving_app, "start_serving", start)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "shutdown", lambda: f.calls.append(("ray.shutdown",)))
    lines = []
    assert serving_app.serve_forever(PipelineConfig(), "unused", log=lines.append) == 0
    assert f.calls == [("delete", "ptalign"), ("ray.shutdown",)] and f.apps == {"chat"}
    assert lines[-1] == "[serve] stopped"


def test_the_offline_judge_replica_is_fitted_on_the_runs_seeds(tmp_path):
    """Refinement's judge app (and `ptalign serve`'s judge) gets the run's seed annotations, so it judges
    with the probes synthesis's screening used; without seeds, the packaged ones."""
    import yaml

    from ptalign_ray.seeds import DEFAULT_SEEDS, load_seeds, seeds_hash

    data = yaml.safe_load(DEFAULT_SEEDS.read_text())
    data["domains"][0]["description"] += " (a run's own wording)"
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump(data))
    custom = load_seeds(path)
    cfg = JudgeConfig().model_dump(mode="json")
    assert seeds_hash(app.JudgeCore(cfg, None, None, custom).backend.seeds) == seeds_hash(custom)
    assert seeds_hash(app.JudgeCore(cfg, None).backend.seeds) == seeds_hash(load_seeds("default"))
