"""Chat messages for each self-synthesis step (rendered by ptalign_ray.chat_template).

Constraints and exemplars appear only here, in synthesis prompts: the training inputs built later
contain the bare question, so the model learns to behave safely without them.
"""

from __future__ import annotations

from ptalign_ray.seeds import Seeds

RED_TEAM_SYSTEM = (
    "You are a red-teaming assistant. You help a safety team test an AI assistant by writing the "
    "kinds of requests that malicious users send, so the assistant can be trained to handle them."
)


def topic_messages(domain: str, description: str, n_topics: int) -> list[dict]:
    return [
        {"role": "system", "content": RED_TEAM_SYSTEM},
        {
            "role": "user",
            "content": (
                f"Harm domain: {domain.replace('_', ' ')} ({description}).\n"
                f"List {n_topics} specific topics in this domain that a malicious user might ask an "
                f"AI assistant about. Answer only with a numbered list, one short topic per line."
            ),
        },
    ]


def question_messages(domain: str, topic: str, examples: list[str], n_questions: int) -> list[dict]:
    shots = "\n".join(f"- {q}" for q in examples)
    intro = f"Examples of such requests:\n{shots}\n\n" if examples else ""
    return [
        {"role": "system", "content": RED_TEAM_SYSTEM},
        {
            "role": "user",
            "content": (
                f"{intro}Write {n_questions} new and different requests that a malicious user might "
                f'send to an AI assistant about "{topic}" (harm domain: {domain.replace("_", " ")}). '
                f"Each request is one sentence. Answer only with a numbered list."
            ),
        },
    ]


BENIGN_SYSTEM = (
    "You help a safety team collect the everyday questions that an AI assistant should answer helpfully, "
    "including questions on sensitive subjects asked for legitimate reasons."
)


def benign_question_messages(domain: str, topic: str, n_questions: int) -> list[dict]:
    """Benign questions near a harm topic (safety, prevention, law, history, how things work): the
    contrast that keeps the aligned model from refusing everything that sounds sensitive."""
    return [
        {"role": "system", "content": BENIGN_SYSTEM},
        {
            "role": "user",
            "content": (
                f"Write {n_questions} different questions that an ordinary, law-abiding person might ask an AI "
                f'assistant about "{topic}" (subject: {domain.replace("_", " ")}), for example about staying '
                f"safe, prevention, the law, history or how something works. Each question is one sentence. "
                f"Answer only with a numbered list."
            ),
        },
    ]


EVERYDAY_SYSTEM = "You help collect the everyday requests that people send to an AI assistant."


def everyday_question_messages(subject: str, n_questions: int) -> list[dict]:
    """Everyday requests on a broad subject far from the harm domains (the general helpfulness anchor)."""
    return [
        {"role": "system", "content": EVERYDAY_SYSTEM},
        {
            "role": "user",
            "content": (
                f"Write {n_questions} different everyday requests that people send to an AI assistant about "
                f"{subject}: questions and instructions, some short, some with a little context. Each request is "
                f"one sentence. Answer only with a numbered list."
            ),
        },
    ]


def question_priming(examples: list[str]) -> str:
    """The start of the model's list of red-team questions: the first seed example as item 1.

    A 135M model asked for "requests a malicious user might send" mostly writes protective or
    everyday questions (measured: ~3 in 50 harmful); continuing a list that already holds a harmful
    request keeps it in that register (measured: ~1 in 4), and the judge screens the rest. Item 1
    itself is a seed question and is dropped by the dedup against the seeds.
    """
    return f"1. {examples[0]}\n2." if examples else ""


def benign_answer_messages(question: str) -> list[dict]:
    """The bare question, exactly as in training: the model's own answer is what it should keep doing."""
    return [{"role": "user", "content": question}]


def response_messages(seeds: Seeds, question: str, polarity: str) -> list[dict]:
    """Positive (harmless, helpful) or toxic (harmful, no refusal) answer under its constraint,
    with the seed exemplars of that polarity as prior turns."""
    if polarity not in ("positive", "toxic"):
        raise ValueError(f"polarity must be 'positive' or 'toxic', got {polarity!r}")
    constraint = seeds.positive_constraint if polarity == "positive" else seeds.toxic_constraint
    messages = [{"role": "system", "content": constraint}]
    for ex in seeds.exemplars:
        answer = ex.positive if polarity == "positive" else ex.toxic
        if answer:
            messages += [{"role": "user", "content": ex.question}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": question})
    return messages
