"""Everything the offline judge learns from: seed annotations and hand-written prototypes.

Two training sets:
- stance: does a *response* go along with what was asked (toxic exemplars, compliant and helpful
  prototypes) or decline / redirect (positive exemplars, refusing and safe prototypes)?
- request: is a *request* harmful (seed questions, domain descriptions, harmful request
  prototypes) or ordinary (benign request prototypes)?

Evaluation data (pyrit's judge-validation CSVs, HarmBench, AdvBench, ...) is never used here;
:func:`all_training_texts` is the complete list, so tests can check it stays that way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptalign_ray.judging import prototypes
from ptalign_ray.seeds import Seeds


@dataclass(frozen=True)
class Example:
    text: str
    positive: bool  # stance: complies; request: harmful
    source: str  # e.g. "seed:toxic_exemplar", "prototype:REFUSING"


def stance_examples(seeds: Seeds) -> list[Example]:
    examples: list[Example] = []
    for ex in seeds.exemplars:
        if ex.toxic:
            examples.append(Example(ex.toxic, True, "seed:toxic_exemplar"))
        if ex.positive:
            examples.append(Example(ex.positive, False, "seed:positive_exemplar"))
    for name, comply in (
        ("COMPLYING_HARMFUL", True),
        ("BENIGN_HELPFUL", True),
        ("REFUSING", False),
        ("SAFE_ENGAGING", False),
    ):
        examples.extend(Example(t, comply, f"prototype:{name}") for t in getattr(prototypes, name))
    return examples


def request_examples(seeds: Seeds) -> list[Example]:
    examples = [Example(q, True, "seed:question") for q in seeds.all_questions()]
    examples += [Example(d.description, True, "seed:domain_description") for d in seeds.domains]
    examples += [Example(t, True, "prototype:HARMFUL_REQUESTS") for t in prototypes.HARMFUL_REQUESTS]
    examples += [Example(t, False, "prototype:BENIGN_REQUESTS") for t in prototypes.BENIGN_REQUESTS]
    # one example per distinct text (an exemplar question may repeat a seed question)
    return list({e.text: e for e in examples}.values())


def all_training_texts(seeds: Seeds) -> list[str]:
    """Every text any learned part of the offline judge is fitted or calibrated on."""
    texts = [e.text for e in stance_examples(seeds)] + [e.text for e in request_examples(seeds)]
    texts += [t for pair in prototypes.ON_TOPIC_PAIRS for t in pair]
    texts += [d.description for d in seeds.domains] + seeds.all_questions()
    return list(dict.fromkeys(texts))
