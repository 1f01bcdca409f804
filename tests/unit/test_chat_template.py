import pytest

from ptalign_ray.chat_template import TemplateError, encode_example, render_ids, render_text, validate_messages

MSGS = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "How do I grow tomatoes?"}]


def test_render_ids_match_text_rendering(tiny_tokenizer):
    text = render_text(tiny_tokenizer, MSGS)
    assert text.endswith("<|im_start|>assistant\n")
    assert render_ids(tiny_tokenizer, MSGS) == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_response_prefix_follows_the_generation_prompt(tiny_tokenizer):
    prefix = "I can't help with"
    ids = render_ids(tiny_tokenizer, MSGS, response_prefix=prefix)
    prompt = render_ids(tiny_tokenizer, MSGS)
    assert ids[: len(prompt)] == prompt
    assert tiny_tokenizer.decode(ids[len(prompt) :]) == prefix
    with pytest.raises(TemplateError, match="generation prompt"):
        render_ids(tiny_tokenizer, MSGS, add_generation_prompt=False, response_prefix=prefix)


def test_encode_example_boundaries_are_exact(tiny_tokenizer):
    response = "Plant them in full sun and water them often."
    ex = encode_example(tiny_tokenizer, MSGS, response)
    assert ex.input_ids[: ex.prompt_len] == render_ids(tiny_tokenizer, MSGS)
    assert ex.response_start == ex.prompt_len
    assert tiny_tokenizer.decode(ex.response_ids) == response
    assert ex.n_end == 1 and ex.input_ids[ex.response_end] == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ex.response_end + ex.n_end <= len(ex.input_ids)


def test_encode_example_rejects_empty_response(tiny_tokenizer):
    with pytest.raises(TemplateError):
        encode_example(tiny_tokenizer, MSGS, "   ")


def test_template_that_drops_the_response_is_caught(tiny_tokenizer):
    import copy

    broken = copy.deepcopy(tiny_tokenizer)
    broken.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with pytest.raises(TemplateError):
        encode_example(broken, MSGS, "Some answer here.")


@pytest.mark.parametrize(
    "messages, expect",
    [
        ([], "non-empty"),
        ([{"role": "robot", "content": "x"}], "role"),
        ([{"role": "user", "content": 3}], "content"),
        (["hello"], "object"),
    ],
)
def test_validate_messages_errors(messages, expect):
    with pytest.raises(ValueError, match=expect):
        validate_messages(messages)
