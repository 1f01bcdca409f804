"""Per-token training masks over ``EncodedExample.input_ids``, and a check that they are sane.

MLE supervises the positive response plus its end-of-turn token(s), so the model learns to stop.
Unlikelihood (UT) only ever touches tokens of the toxic response text itself: never the prompt, the
role/template tokens, the end-of-turn, pad or any other special token. Masks here are plain
``list[bool]`` over input_ids; the trainer pads them to a tensor and applies
:func:`ptalign_ray.training.loss.shift_mask` to align them with the next-token log-probs.
"""

from __future__ import annotations

from typing import AbstractSet, Iterable, Optional, Sequence

from ptalign_ray.chat_template import EncodedExample

MASK_MODES = ("diff", "all", "judge")

Span = tuple[int, int]


class MaskError(ValueError):
    """A training mask that would silently train on nothing, on everything, or on special tokens."""


def _check_bounds(ex: EncodedExample) -> None:
    n = len(ex.input_ids)
    if not (0 <= ex.prompt_len <= ex.response_start < ex.response_end and ex.response_end + ex.n_end <= n):
        raise MaskError(
            f"inconsistent EncodedExample boundaries: prompt_len={ex.prompt_len}, response=[{ex.response_start}, "
            f"{ex.response_end}), n_end={ex.n_end}, len(input_ids)={n}"
        )


def mle_targets(ex: EncodedExample) -> list[bool]:
    """True on the response tokens and the end-of-turn token(s); False on prompt, template and pad."""
    _check_bounds(ex)
    stop = ex.response_end + ex.n_end
    return [ex.response_start <= i < stop for i in range(len(ex.input_ids))]


def ut_targets(
    toxic: EncodedExample,
    positive: Optional[EncodedExample],
    mode: str,
    harmful_spans: Optional[Iterable[Span]] = None,
    special_ids: AbstractSet[int] = frozenset(),
) -> list[bool]:
    """Which toxic tokens get the unlikelihood penalty, over ``toxic.input_ids``.

    Only positions in ``[toxic.response_start, toxic.response_end)`` whose id is not in ``special_ids``
    can be selected (so never the prompt, template, end-of-turn, pad or EOS). Modes:

    - ``all``: every such token (sequence-level UT ablation).
    - ``diff`` (default in the config): tokens whose id does not occur among ``positive``'s response
      ids - drops topic words, function words and formatting shared with the harmless answer.
    - ``judge``: tokens inside ``harmful_spans``, a list of half-open ``(start, end)`` token index
      ranges **relative to the response start**: ``(0, 3)`` covers
      ``input_ids[response_start : response_start + 3]``. Spans must lie inside the response.
    """
    _check_bounds(toxic)
    if mode not in MASK_MODES:
        raise ValueError(f"unknown UT mask mode {mode!r}; expected one of {list(MASK_MODES)}")
    n_resp = toxic.response_end - toxic.response_start

    if mode == "all":
        selected = [True] * n_resp
    elif mode == "diff":
        if positive is None:
            raise ValueError("UT mask mode 'diff' needs the positive response for the same question")
        _check_bounds(positive)
        positive_ids = set(positive.response_ids)
        selected = [tok not in positive_ids for tok in toxic.response_ids]
    else:  # judge
        spans = list(harmful_spans) if harmful_spans is not None else []
        if not spans:
            raise ValueError(
                "UT mask mode 'judge' needs harmful_spans from the judge (token ranges relative to the "
                "response start); got none - use mode 'diff' or 'all', or drop samples the judge cannot mark"
            )
        selected = [False] * n_resp
        for start, end in spans:
            if not 0 <= start < end <= n_resp:
                raise ValueError(f"harmful span ({start}, {end}) is outside the response's {n_resp} tokens")
            for j in range(start, end):
                selected[j] = True

    mask = [False] * len(toxic.input_ids)
    for j, tok in enumerate(toxic.response_ids):
        if selected[j] and tok not in special_ids:
            mask[toxic.response_start + j] = True
    return mask


def check_example(
    sample_id: str,
    input_ids: Sequence[int],
    mle_mask: Optional[Sequence[bool]] = None,
    ut_mask: Optional[Sequence[bool]] = None,
    special_ids: AbstractSet[int] = frozenset(),
) -> None:
    """Raises MaskError (naming the sample) for the classic silent mask bugs.

    Each given mask must select strictly between 0% and 100% of the tokens: all-zero trains on nothing,
    all-one trains on the prompt too. ``special_ids`` should hold every special id of the tokenizer,
    pad and EOS included; none of them may sit inside the UT mask. (The MLE mask legitimately covers
    the end-of-turn token, so it is not checked for special ids.) Callers usually drop such samples.
    """
    ids = [int(t) for t in input_ids]
    for name, mask in (("MLE", mle_mask), ("UT", ut_mask)):
        if mask is None:
            continue
        flags = [bool(v) for v in mask]
        if len(flags) != len(ids):
            raise MaskError(f"sample {sample_id!r}: {name} mask has {len(flags)} entries for {len(ids)} tokens")
        n = sum(flags)
        if n == 0:
            raise MaskError(f"sample {sample_id!r}: {name} mask selects none of the {len(ids)} tokens (all-zero mask)")
        if n == len(ids):
            raise MaskError(
                f"sample {sample_id!r}: {name} mask selects all {len(ids)} tokens (all-one mask: prompt/template included)"
            )
        if name == "UT":
            bad = [i for i, (tok, on) in enumerate(zip(ids, flags)) if on and tok in special_ids]
            if bad:
                raise MaskError(
                    f"sample {sample_id!r}: UT mask covers special/pad/EOS token id {ids[bad[0]]} at position {bad[0]}"
                )
