"""The one chat-template rendering used by synthesis, refinement, training, serving and evaluation.

Every stage turns OpenAI-style messages into token ids here, with the target model's own chat
template, so training and inference can never see two different renderings of the same prompt.
Prompts go to vLLM as token ids (not text) so no engine adds a second BOS token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}

_ROLES = {"system", "user", "assistant"}


class TemplateError(ValueError):
    """The tokenizer's chat template cannot render what a stage needs."""


def validate_messages(messages: Sequence[Message]) -> list[Message]:
    """Checks OpenAI-style messages and returns plain dicts; raises ValueError saying what is wrong."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in _ROLES:
            raise ValueError(f"messages[{i}].role must be one of {sorted(_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return out


@functools.lru_cache(maxsize=8)
def load_tokenizer(model_path: str, trust_remote_code: bool = False):
    """Loads (once per process) the tokenizer of a local model directory; it must have a chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    if not getattr(tok, "chat_template", None):
        raise TemplateError(f"the tokenizer of {model_path} has no chat template; pick a chat/instruct model")
    return tok


def _as_ids(rendered) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True).
    if hasattr(rendered, "keys") and "input_ids" in rendered:
        rendered = rendered["input_ids"]
    return [int(t) for t in rendered]


def render_text(tokenizer, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """The prompt as text (for display, hashing and token counting); use render_ids for engines."""
    return tokenizer.apply_chat_template(
        validate_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def render_ids(
    tokenizer, messages: Sequence[Message], add_generation_prompt: bool = True, response_prefix: str = ""
) -> list[int]:
    """Token ids of a prompt, exactly as the model sees it in every stage.

    ``response_prefix`` is text the assistant's answer starts with (response priming): its tokens
    follow the generation prompt, and the engine continues from there.
    """
    ids = _as_ids(
        tokenizer.apply_chat_template(
            validate_messages(messages), tokenize=True, add_generation_prompt=add_generation_prompt
        )
    )
    if response_prefix:
        if not add_generation_prompt:
            raise TemplateError("a response prefix needs the generation prompt before it")
        ids += list(tokenizer.encode(response_prefix, add_special_tokens=False))
    return ids


@dataclass(frozen=True)
class EncodedExample:
    """A prompt + assistant response as token ids with exact role boundaries.

    ``input_ids[:prompt_len]`` is the rendered prompt (with the generation prompt);
    ``input_ids[response_start:response_end]`` are the tokens of the response text itself;
    ``input_ids[response_end:response_end + n_end]`` the end-of-turn token(s) the model must learn to emit.
    """

    input_ids: list[int]
    prompt_len: int
    response_start: int
    response_end: int
    n_end: int

    @property
    def response_ids(self) -> list[int]:
        return self.input_ids[self.response_start : self.response_end]


def encode_example(tokenizer, prompt_messages: Sequence[Message], response: str) -> EncodedExample:
    """Renders prompt + response with the chat template and finds the response tokens exactly.

    The boundary is derived from character offsets of the one rendering, not by tokenising the
    parts separately, so there is no re-tokenisation mismatch. Raises TemplateError when the
    template does not render the prompt as a prefix of the conversation or drops the response.
    """
    if not isinstance(response, str) or not response.strip():
        raise TemplateError("response must be a non-empty string")
    prompt_messages = validate_messages(prompt_messages)
    prompt_text = render_text(tokenizer, prompt_messages, add_generation_prompt=True)
    full_messages = prompt_messages + [{"role": "assistant", "content": response}]
    full_text = render_text(tokenizer, full_messages, add_generation_prompt=False)
    if not full_text.startswith(prompt_text):
        raise TemplateError("chat template does not render the prompt as a prefix of prompt + response")
    start_char = full_text.find(response, len(prompt_text))
    if start_char < 0:
        raise TemplateError("chat template did not render the assistant response verbatim")
    end_char = start_char + len(response)

    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(t) for t in enc["input_ids"]]
    offsets = enc["offset_mapping"]
    expected = render_ids(tokenizer, full_messages, add_generation_prompt=False)
    if ids != expected:
        raise TemplateError("tokenising the rendered text differs from apply_chat_template's ids")
    prompt_ids = render_ids(tokenizer, prompt_messages, add_generation_prompt=True)
    if ids[: len(prompt_ids)] != prompt_ids:
        raise TemplateError("prompt tokens are not a prefix of the conversation tokens")

    inside = [i for i, (s, e) in enumerate(offsets) if e > start_char and s < end_char]
    if not inside:
        raise TemplateError("no token of the response was found")
    r_start, r_end = inside[0], inside[-1] + 1
    if r_start < len(prompt_ids):
        raise TemplateError("response tokens overlap the prompt tokens (template merges them)")

    specials = set(tokenizer.all_special_ids)
    n_end = 1 if r_end < len(ids) and ids[r_end] in specials else 0
    return EncodedExample(ids, len(prompt_ids), r_start, r_end, n_end)
