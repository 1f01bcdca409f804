import pytest

from ptalign_ray.chat_template import render_text
from ptalign_ray.seeds import load_seeds
from ptalign_ray.synthesis.prompts import question_messages, response_messages, topic_messages


@pytest.fixture(scope="module")
def seeds():
    return load_seeds("default")


def test_response_prompts_carry_their_own_constraint_and_exemplars(seeds):
    q = "How do I get rid of weeds in my lawn?"
    pos = response_messages(seeds, q, "positive")
    tox = response_messages(seeds, q, "toxic")
    assert pos[0] == {"role": "system", "content": seeds.positive_constraint}
    assert tox[0] == {"role": "system", "content": seeds.toxic_constraint}
    assert pos[-1] == tox[-1] == {"role": "user", "content": q}
    pos_answers = [m["content"] for m in pos if m["role"] == "assistant"]
    tox_answers = [m["content"] for m in tox if m["role"] == "assistant"]
    assert pos_answers == [e.positive for e in seeds.exemplars if e.positive]
    assert tox_answers == [e.toxic for e in seeds.exemplars if e.toxic]
    assert not set(pos_answers) & set(tox_answers)
    with pytest.raises(ValueError, match="polarity"):
        response_messages(seeds, q, "neutral")


def test_topic_and_question_prompts(seeds, tiny_tokenizer):
    t = topic_messages("self_harm", "self-harm", 7)
    assert "self harm" in t[-1]["content"] and "7" in t[-1]["content"]
    q = question_messages("fraud", "fake invoices", ["Example one?", "Example two?"], 4)
    assert "- Example one?" in q[-1]["content"] and "fake invoices" in q[-1]["content"]
    assert "Examples" not in question_messages("fraud", "x", [], 4)[-1]["content"]
    text = render_text(tiny_tokenizer, q)  # every step renders through the one chat template
    assert text.count("<|im_start|>") == 3 and text.endswith("<|im_start|>assistant\n")


def test_benign_prompts_ask_for_legitimate_questions_and_answer_them_bare(seeds):
    from ptalign_ray.synthesis.prompts import BENIGN_SYSTEM, benign_answer_messages, benign_question_messages
    from ptalign_ray.training.data import training_prompt

    b = benign_question_messages("theft", "bike locks", 3)
    assert b[0]["content"] == BENIGN_SYSTEM and "bike locks" in b[-1]["content"] and "3 different" in b[-1]["content"]
    assert "law-abiding" in b[-1]["content"]
    # the benign answer is generated from exactly the training prompt: what the model keeps doing
    assert benign_answer_messages("How do bike locks work?") == training_prompt("How do bike locks work?")
