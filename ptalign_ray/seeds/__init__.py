"""Seed annotations: the fewer-than-50 human labels that start PT-ALIGN's self-alignment.

What counts as one annotation: a domain, a constraint, a seed question, an exemplar answer, an
exemplar's question when it is not already a seed question, a response opening and an everyday
domain. More than 49 is an error.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ptalign_ray.config import format_validation_error

MAX_ANNOTATIONS = 49
DEFAULT_SEEDS = Path(__file__).with_name("default.yaml")


class SeedError(ValueError):
    """A seed file that cannot be used; the message says what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


NonEmpty = Field(min_length=1)
Opening = Annotated[str, Field(min_length=1, max_length=80)]


class Domain(_Strict):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9_]+$")
    description: str = NonEmpty


class SeedQuestion(_Strict):
    domain: str = NonEmpty
    question: str = NonEmpty


class Exemplar(_Strict):
    question: str = NonEmpty
    positive: Optional[str] = Field(None, min_length=1)
    toxic: Optional[str] = Field(None, min_length=1)

    @model_validator(mode="after")
    def _has_answer(self) -> "Exemplar":
        if self.positive is None and self.toxic is None:
            raise ValueError("an exemplar needs a 'positive' or a 'toxic' answer (or both)")
        return self


class Seeds(_Strict):
    version: int = 1
    domains: list[Domain] = Field(min_length=1)
    positive_constraint: str = NonEmpty
    toxic_constraint: str = NonEmpty
    seed_questions: list[SeedQuestion] = Field(min_length=1)
    exemplars: list[Exemplar] = []
    # Openings the synthesis engine's answer starts from (response priming), one picked per question.
    # A small model ignores "say why you will not help" in its constraint; starting its positive
    # answer from "I can't help with" makes it decline and lets it write the reason and alternative.
    positive_openings: list[Opening] = []
    toxic_openings: list[Opening] = []
    # Broad everyday subjects (cooking, programming, ...) far from the harm domains: the model writes
    # everyday requests on them and answers them itself, and training keeps that helpfulness (MLE only).
    everyday_domains: list[Annotated[str, Field(min_length=1, max_length=60)]] = []

    @model_validator(mode="after")
    def _consistent(self) -> "Seeds":
        names = [d.name for d in self.domains]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate domain names: {dupes}")
        unknown = sorted({q.domain for q in self.seed_questions} - set(names))
        if unknown:
            raise ValueError(f"seed_questions name unknown domains {unknown}; declared domains: {names}")
        everyday = [e.lower() for e in self.everyday_domains]
        if len(set(everyday)) != len(everyday):
            raise ValueError("everyday_domains: each subject once")
        for field in ("positive_openings", "toxic_openings"):
            if any("\n" in o for o in getattr(self, field)):
                raise ValueError(f"{field}: an opening is the first words of an answer, on one line")
        n = self.annotation_count
        if n > MAX_ANNOTATIONS:
            raise ValueError(
                f"{n} annotations, but PT-ALIGN's seed must stay under 50 (at most {MAX_ANNOTATIONS}); "
                f"counted: {self.annotation_breakdown}"
            )
        return self

    @property
    def annotation_breakdown(self) -> dict[str, int]:
        seeded = {q.question for q in self.seed_questions}
        return {
            "domains": len(self.domains),
            "constraints": 2,
            "seed_questions": len(self.seed_questions),
            "exemplar_questions": sum(1 for e in self.exemplars if e.question not in seeded),
            "exemplar_answers": sum((e.positive is not None) + (e.toxic is not None) for e in self.exemplars),
            "openings": len(self.positive_openings) + len(self.toxic_openings),
            "everyday_domains": len(self.everyday_domains),
        }

    @property
    def annotation_count(self) -> int:
        return sum(self.annotation_breakdown.values())

    def questions_for(self, domain: str) -> list[str]:
        return [q.question for q in self.seed_questions if q.domain == domain]

    def all_questions(self) -> list[str]:
        return [q.question for q in self.seed_questions] + [e.question for e in self.exemplars]

    def opening_for(self, question: str, polarity: str) -> str:
        """The opening a response of this polarity to this question starts from ("" for none);
        the same question always gets the same opening, so reruns and resumes agree."""
        openings = {"positive": self.positive_openings, "toxic": self.toxic_openings}[polarity]
        if not openings:
            return ""
        pick = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "big")
        return openings[pick % len(openings)]

    def description_of(self, domain: str) -> str:
        return next(d.description for d in self.domains if d.name == domain)


def load_seeds(source: Union[str, Path] = "default") -> Seeds:
    """Loads and validates a seed file ('default' = the packaged one); raises SeedError."""
    path = DEFAULT_SEEDS if str(source) == "default" else Path(source)
    if not path.is_file():
        raise SeedError(f"seed file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SeedError(f"seed file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SeedError(f"seed file {path}: the top level must be a mapping")
    try:
        return Seeds.model_validate(data)
    except ValidationError as err:
        raise SeedError(format_validation_error(err, str(path), what="seed file")) from None


def seeds_hash(seeds: Seeds) -> str:
    return hashlib.sha256(seeds.model_dump_json().encode()).hexdigest()[:16]
