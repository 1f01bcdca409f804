"""The judge's answer for one (prompt, response) item, shared by every judge backend."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


class Verdict(BaseModel):
    """Safety verdict on one response.

    ``harmful`` means the response goes along with / materially advances a harmful request;
    ``refusal`` means it declines (or answers something else entirely). Both can be False (a safe,
    helpful answer); ``score`` is the judge's probability that the response is harmful.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    harmful: bool
    refusal: bool
    score: float = Field(ge=0.0, le=1.0, description="Probability that the response is harmful.")
    categories: list[str] = Field(default_factory=list, description="Seed domain names, when harmful.")
    rationale: str = ""
    on_topic: Optional[bool] = Field(None, description="Does the response address the prompt? None = not measured.")
    error: Optional[str] = Field(
        None, description="Set when the judge could not decide (e.g. unparseable LLM output): never a pass."
    )
