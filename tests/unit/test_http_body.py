import pytest

from ptalign_ray.config import JudgeConfig
from ptalign_ray.http_body import HttpError, parse_json_body
from ptalign_ray.judging.app import parse_judge_request


@pytest.mark.parametrize(
    "body, needle",
    [(b"", "empty body: send X"), (b"  \n", "empty body"), (b"{x", "not valid JSON"), (b"\xff\xfe", "not valid JSON")],
)
def test_bodies_that_are_not_json_get_a_400_saying_what_to_send(body, needle):
    with pytest.raises(HttpError) as err:
        parse_json_body(body, "X")
    assert err.value.status == 400 and needle in err.value.message


def test_json_of_any_shape_is_returned_for_the_caller_to_check():
    assert parse_json_body(b'{"a": [1]}', "X") == {"a": [1]}
    assert parse_json_body(b"[1, 2]", "X") == [1, 2]


def test_the_judge_maps_body_errors_to_its_own_error_type():
    with pytest.raises(HttpError) as err:
        parse_judge_request(b"", JudgeConfig())
    assert err.value.status == 400 and '{"items"' in err.value.message
