"""The stage time budget: engine start-up is charged to the step that paid for it, once."""

from __future__ import annotations

import time

from ptalign_ray import generation
from ptalign_ray.runs import StepTimer


def test_engine_start_is_charged_to_the_step_that_started_it(monkeypatch):
    monkeypatch.setattr(generation, "ENGINE_LOADS", [])
    timer = StepTimer()
    with timer.step("topics"):
        generation.ENGINE_LOADS.append(generation.EngineLoad("model", 0.05, swapped=False))  # an engine start
        time.sleep(0.06)
    with timer.step("questions"):  # the engine is reused: no start-up in this step
        time.sleep(0.01)
    assert timer.steps["topics"]["engine_start_s"] == 0.05
    assert timer.steps["questions"]["engine_start_s"] == 0.0
    budget = timer.time_budget()
    assert budget["engine_start_s"] == 0.05
    assert budget["steps_s"]["topics"] == round(timer.steps["topics"]["seconds"] - 0.05, 2)
    assert budget["steps_s"]["questions"] == timer.steps["questions"]["seconds"]
    parts = budget["engine_start_s"] + sum(budget["steps_s"].values()) + budget["other_s"]
    assert abs(parts - budget["wall_s"]) < 0.02


def test_training_budget_parts_add_up_to_the_fit():
    """The training stage's budget: driver-side preparation, the worker's phases (rank 0), the optimizer
    steps from the logged windows, and the rest as "other"; the merge is reported apart from the fit."""
    from ptalign_ray.training.stage import _budget_text, _time_budget

    state = {
        "seconds": {"worker_start": 5.0, "setup": 3.0, "holdout": 2.5, "checkpoint": 0.5},
        "history": [{"step": 0}, {"step": 5, "step_time_s": 2.0}, {"step": 8, "step_time_s": 1.0}],
    }
    budget = _time_budget(30.0, 1.0, state, merge_s=2.25)
    assert budget["steps_s"] == 13.0  # 5 x 2.0 + 3 x 1.0
    assert budget["other_s"] == 30.0 - (1.0 + 5.0 + 3.0 + 2.5 + 0.5 + 13.0)
    assert budget["merge_s"] == 2.25 and budget["fit_s"] == 30.0
    text = _budget_text({"wall_seconds": 30.0, "time_budget": budget})
    assert text.startswith("30s (prepare 1s, worker start 5s, setup 3s, holdout 2s") and text.endswith("+ merge 2s")
    # a manifest written before the worker's phases were measured still prints
    assert _budget_text({"wall_seconds": 80.4, "time_budget": {"fit_s": 80.4, "steps_s": 61.8, "merge_s": 2.3}}) == (
        "80s (steps 62s) + merge 2s"
    )


def test_the_controller_poll_setting_is_one_ray_train_reads_and_hands_to_its_controller(monkeypatch):
    """A Ray upgrade that renames the variable would silently bring back 1-2 s at every fit's end."""
    from ray.train.v2._internal import constants

    from ptalign_ray.training.stage import CONTROLLER_POLL

    name, value = CONTROLLER_POLL
    assert name == constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR
    assert 0 < float(value) < constants.DEFAULT_HEALTH_CHECK_INTERVAL_S
    monkeypatch.setenv(name, value)
    assert constants.get_env_vars_to_propagate().get(name) == value
