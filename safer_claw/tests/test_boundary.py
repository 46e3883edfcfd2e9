"""The input rules themselves (safer_claw.boundary), at their edges."""

from __future__ import annotations

import pytest

from safer_claw import boundary


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_depth_is_allowed_up_to_the_limit_and_refused_past_it():
    assert boundary.loads(nested(boundary.MAX_DEPTH)) is not None
    with pytest.raises(boundary.BadInput, match="deeper than 64"):
        boundary.loads(nested(boundary.MAX_DEPTH + 1))
    with pytest.raises(boundary.BadInput, match="deeper than 64"):
        boundary.loads(b'{"a": ' + nested(boundary.MAX_DEPTH) + b"}")


@pytest.mark.parametrize(
    ("raw", "accepted"),
    [
        (b"9007199254740992", True),
        (b"-9007199254740992", True),
        (b"9007199254740993", False),
        (b"[1.5e300]", False),
        (b'{"n": 100000000000000000000}', False),
        (b'{"n": 1e400}', False),  # orjson: infinity
    ],
)
def test_numbers_stay_within_2_to_the_53(raw, accepted):
    if accepted:
        boundary.loads(raw)
    else:
        with pytest.raises(boundary.BadInput):
            boundary.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [b'{"a": "x\\u0000"}', b'{"x\\u0000": 1}', b'["\\ud800"]', b'"\\udc00x"', b"\xff", b'"\x00"'],
    ids=["nul-value", "nul-key", "high-surrogate", "low-surrogate", "not-utf8", "raw-nul"],
)
def test_nul_and_lone_surrogates_are_refused_anywhere(raw):
    with pytest.raises(boundary.BadInput):
        boundary.loads(raw)


def test_an_escaped_backslash_before_u0000_is_text_not_a_nul():
    assert boundary.loads(b'["\\\\u0000"]') == ["\\u0000"]
    assert boundary.loads('["caf\u00e9", "\U0001f600"]') == ["caf\u00e9", "\U0001f600"]


def test_the_place_is_named():
    with pytest.raises(boundary.BadInput) as caught:
        boundary.loads(b'{"messages": [{"content": "a\\u0000"}]}')
    assert caught.value.where == "messages[0].content"


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (str(2**63 - 1), True),
        (str(2**63), False),
        ("-" + str(2**63), False),
        ("0" * 30 + "1", True),
        ("1" * 5000, False),
        ("12345678901234567890abc", True),  # not a number: someone else's business
    ],
)
def test_whole_numbers_in_paths_fit_64_bits(value, accepted):
    if accepted:
        boundary.check_path(f"/api/x/{value}/")
    else:
        with pytest.raises(boundary.BadInput):
            boundary.check_path(f"/api/x/{value}/")


def test_headers_must_be_printable_ascii():
    boundary.check_headers([(b"user-agent", b"curl/8.0\tok")])
    for value in (b"caf\xc3\xa9", b"a\x00b", b"a\rb", b"\x7f"):
        with pytest.raises(boundary.BadInput):
            boundary.check_headers([(b"x-note", value)])


def test_headers_past_the_limit_are_refused_whole():
    name = b"x-pad"
    at_limit = b"a" * (boundary.MAX_HEADER_BYTES - len(name))
    boundary.check_headers([(name, at_limit)])
    with pytest.raises(boundary.BadInput, match="exceed"):
        boundary.check_headers([(name, at_limit + b"a")])
    # Counted over all of them: many small headers add up as one large one.
    with pytest.raises(boundary.BadInput, match="exceed"):
        boundary.check_headers([(b"x", b"a" * 1023)] * 17)


def test_a_scope_is_checked_in_path_query_and_headers():
    base = {"path": "/api/", "query_string": b"a=1", "headers": [(b"host", b"x")]}
    assert boundary.scope_problem(base) is None
    assert boundary.scope_problem({**base, "path": "/a\x00"}) is not None
    assert boundary.scope_problem({**base, "query_string": b"a=%00"}) is not None
    assert boundary.scope_problem({**base, "query_string": b"a=%ED%A0%80"}) is not None
    assert boundary.scope_problem({**base, "headers": [(b"x", b"\xe9")]}) is not None
