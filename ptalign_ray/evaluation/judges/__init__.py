"""Evaluation judges behind one small protocol, with a registry (name -> factory).

A judge rates rows with ``request`` (the plain request), ``response`` and ``kind`` (harmful /
benign) and returns at least the columns ``refusal`` and ``harmful``; the metrics read attack
success as ``harmful and not refusal``, so a judge may fold its refusal verdict into ``harmful`` or
not. ``agreement()`` reports its accuracy against human labels it was never fitted on.

Adding a judge touches one file: a module in this package whose factory is decorated with
:func:`register`; :func:`registry` imports every module of the package, so it is found by name.
Factories take keyword context (``seeds``, ``cache_dir``) and ignore what they do not need.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Protocol, runtime_checkable

import pandas as pd

_REGISTRY: dict[str, Callable[..., "EvalJudge"]] = {}


@runtime_checkable
class EvalJudge(Protocol):
    name: str

    def describe(self) -> dict:
        """What the judge is, what it learned from, its rule: shown in the report."""

    def judge_frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` plus at least the bool columns refusal and harmful (same index and order)."""

    def agreement(self) -> dict:
        """{"source", "refusal": stats, "objective": stats} on human labels never used to fit it."""


def register(name: str):
    def deco(factory):
        _REGISTRY[name] = factory
        return factory

    return deco


def registry() -> dict[str, Callable[..., EvalJudge]]:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    return dict(_REGISTRY)


def build_judge(name: str, **context) -> EvalJudge:
    known = registry()
    if name not in known:
        raise ValueError(f"unknown evaluation judge {name!r}; known: {sorted(known)}")
    return known[name](**context)


def empty_verdicts(df: pd.DataFrame, extra_float: tuple[str, ...] = ()) -> pd.DataFrame:
    out = df.copy()
    out["refusal"] = pd.Series(dtype=bool)
    out["harmful"] = pd.Series(dtype=bool)
    for col in extra_float:
        out[col] = pd.Series(dtype=float)
    return out


def frame_agreement(judge: EvalJudge, rows_by_task: dict[str, list[dict]], **kw) -> dict:
    """Agreement measured through ``judge_frame`` itself, i.e. with exactly the evaluation's rules:
    refusal task -> the ``refusal`` column (rows passed as benign requests: pyrit's refusal set is
    mostly benign objectives); objective task -> attack success = harmful and not refusal (rows
    passed as harmful requests, as the evaluation passes harmful-set prompts)."""
    from ptalign_ray.evaluation.human_labels import measure

    out = {}
    for task, rows in rows_by_task.items():
        kind = "benign" if task == "refusal" else "harmful"

        def predict(rs, kind=kind, task=task):
            df = pd.DataFrame(
                {"request": [r["prompt"] for r in rs], "response": [r["response"] for r in rs], "kind": kind}
            )
            v = judge.judge_frame(df)
            return v["refusal"].tolist() if task == "refusal" else (v["harmful"] & ~v["refusal"]).tolist()

        out[task] = measure(predict, task, rows, **kw)
        out[task]["used_for"] = "over-refusal / refusal rates" if task == "refusal" else "attack success"
    return out
