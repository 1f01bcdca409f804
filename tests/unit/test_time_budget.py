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
