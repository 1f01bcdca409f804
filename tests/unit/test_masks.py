"""Token masks: what MLE and unlikelihood may touch, and the checks that catch silent mask bugs."""

from __future__ import annotations

import pytest

from ptalign_ray.chat_template import EncodedExample
from ptalign_ray.training.masks import MaskError, check_example, mle_targets, ut_targets

# ids: 0 pad, 1 bos, 2 role start, 3 end-of-turn (all special); 10, 11 prompt text; 20.. response text.
SPECIAL = frozenset({0, 1, 2, 3})

TOXIC = EncodedExample(
    [1, 10, 11, 2, 20, 21, 22, 23, 24, 3, 0], prompt_len=4, response_start=4, response_end=9, n_end=1
)
POSITIVE = EncodedExample([1, 10, 11, 2, 20, 30, 23, 31, 3], prompt_len=4, response_start=4, response_end=8, n_end=1)


def _on(mask: list[bool]) -> list[int]:
    return [i for i, m in enumerate(mask) if m]


def test_mle_targets_cover_response_and_end_of_turn_only():
    mask = mle_targets(POSITIVE)
    assert len(mask) == len(POSITIVE.input_ids)
    assert _on(mask) == [4, 5, 6, 7, 8]  # response 4..7 + end-of-turn at 8
    no_end = EncodedExample([1, 2, 20, 21], prompt_len=2, response_start=2, response_end=4, n_end=0)
    assert _on(mle_targets(no_end)) == [2, 3]


def test_ut_all_covers_every_response_token():
    assert _on(ut_targets(TOXIC, None, "all", special_ids=SPECIAL)) == [4, 5, 6, 7, 8]


def test_ut_diff_drops_tokens_shared_with_positive():
    mask = ut_targets(TOXIC, POSITIVE, "diff", special_ids=SPECIAL)
    # 20 and 23 also occur in the positive response -> dropped; 21, 22, 24 kept.
    assert [TOXIC.input_ids[i] for i in _on(mask)] == [21, 22, 24]
    assert _on(mask) == [5, 6, 8]


def test_ut_diff_ignores_positive_prompt_tokens():
    # Prompt ids 10 / 11 are in the positive's input_ids but not its response: they do not protect toxic tokens.
    toxic = EncodedExample([1, 10, 2, 10, 11, 3], prompt_len=3, response_start=3, response_end=5, n_end=1)
    positive = EncodedExample([1, 10, 2, 30, 3], prompt_len=3, response_start=3, response_end=4, n_end=1)
    assert _on(ut_targets(toxic, positive, "diff", special_ids=SPECIAL)) == [3, 4]


def test_ut_judge_uses_spans_relative_to_response_start():
    mask = ut_targets(TOXIC, None, "judge", harmful_spans=[(1, 3), (4, 5)], special_ids=SPECIAL)
    assert _on(mask) == [5, 6, 8]


@pytest.mark.parametrize("mode", ["all", "diff", "judge"])
def test_ut_never_touches_prompt_end_of_turn_or_special_tokens(mode):
    # A special id (2) inside the response text must be skipped too.
    toxic = EncodedExample([1, 10, 2, 20, 2, 21, 3, 0], prompt_len=3, response_start=3, response_end=6, n_end=1)
    positive = EncodedExample([1, 10, 2, 30, 3], prompt_len=3, response_start=3, response_end=4, n_end=1)
    mask = ut_targets(toxic, positive, mode, harmful_spans=[(0, 3)], special_ids=SPECIAL)
    assert _on(mask) == [3, 5]
    for i in _on(mask):
        assert toxic.response_start <= i < toxic.response_end
        assert toxic.input_ids[i] not in SPECIAL


def test_ut_targets_errors():
    with pytest.raises(ValueError, match="judge"):
        ut_targets(TOXIC, POSITIVE, "judge", special_ids=SPECIAL)
    with pytest.raises(ValueError, match="judge"):
        ut_targets(TOXIC, POSITIVE, "judge", harmful_spans=[], special_ids=SPECIAL)
    with pytest.raises(ValueError, match="outside"):
        ut_targets(TOXIC, POSITIVE, "judge", harmful_spans=[(3, 9)], special_ids=SPECIAL)
    with pytest.raises(ValueError, match="positive"):
        ut_targets(TOXIC, None, "diff", special_ids=SPECIAL)
    with pytest.raises(ValueError, match="unknown UT mask mode"):
        ut_targets(TOXIC, POSITIVE, "sequence", special_ids=SPECIAL)
    broken = EncodedExample([1, 2, 20], prompt_len=2, response_start=2, response_end=3, n_end=1)
    with pytest.raises(MaskError, match="boundaries"):
        mle_targets(broken)


def test_check_example_accepts_good_masks():
    check_example(
        "q-ok",
        TOXIC.input_ids,
        mle_mask=mle_targets(TOXIC),
        ut_mask=ut_targets(TOXIC, POSITIVE, "diff", special_ids=SPECIAL),
        special_ids=SPECIAL,
    )


def test_check_example_catches_all_zero_mask():
    with pytest.raises(MaskError, match="q-17.*all-zero"):
        check_example("q-17", TOXIC.input_ids, mle_mask=[False] * len(TOXIC.input_ids))
    # diff mode can legitimately empty a toxic mask; the check still names it so the caller drops it.
    same = ut_targets(POSITIVE, POSITIVE, "diff", special_ids=SPECIAL)
    with pytest.raises(MaskError, match="q-18.*UT.*all-zero"):
        check_example("q-18", POSITIVE.input_ids, ut_mask=same, special_ids=SPECIAL)


def test_check_example_catches_all_one_mask():
    with pytest.raises(MaskError, match="q-23.*all-one"):
        check_example("q-23", TOXIC.input_ids, mle_mask=[True] * len(TOXIC.input_ids))


def test_check_example_catches_special_token_in_ut_span():
    mask = ut_targets(TOXIC, None, "all", special_ids=SPECIAL)
    mask[TOXIC.response_end] = True  # the end-of-turn token
    with pytest.raises(MaskError, match="q-42.*special"):
        check_example("q-42", TOXIC.input_ids, ut_mask=mask, special_ids=SPECIAL)
    pad = ut_targets(TOXIC, None, "all", special_ids=SPECIAL)
    pad[-1] = True  # the pad token
    with pytest.raises(MaskError, match="q-43"):
        check_example("q-43", TOXIC.input_ids, ut_mask=pad, special_ids=SPECIAL)


def test_check_example_catches_length_mismatch():
    with pytest.raises(MaskError, match="q-5"):
        check_example("q-5", TOXIC.input_ids, mle_mask=[True, False])
