"""What any input may contain, decided once at the edge, before anything parses deeply,
writes to the database or reserves money (issue 15).

Every way in uses these rules, so a field added later is covered without
thinking about it:

- text (a path, a query parameter, a cookie, a JSON string or key) holds no NUL
  (PostgreSQL's text and jsonb cannot store one) and no lone surrogate (it
  cannot be encoded as UTF-8, so it breaks the first write or log line);
- a whole number in a path segment or a query value fits a 64-bit integer
  column (SQLite raised OverflowError on a larger one, and no id is larger);
- a header value is printable ASCII (or a tab): nothing downstream reads
  anything else, and the agent's own headers go upstream;
- a request's headers add up to at most ``MAX_HEADER_BYTES`` (production serves
  uvicorn's httptools protocol, which sets no limit of its own);
- a JSON body nests at most ``MAX_DEPTH`` levels (deeper bodies end in
  RecursionError in whatever walks them next: Stripe's library, json.dumps,
  our allow-lists) and its numbers stay within ±``MAX_NUMBER`` (2^53, what
  every JSON reader holds exactly; larger ones overflowed Decimal contexts,
  bigint columns and datetime.fromtimestamp).

``loads`` is the one JSON reader for request bodies; ``scope_problem`` checks
an ASGI request (safer_claw.asgi) and ``safer_claw.middleware`` a Django one
with the same functions. Each endpoint family turns a ``BadInput`` into its
own error shape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

MAX_DEPTH = 64
MAX_NUMBER = 2**53
# Names and values together; h11's default limit, far above any request of ours
# (a bearer token, a session and CSRF cookie, a Stripe signature).
MAX_HEADER_BYTES = 16 * 1024
# Control characters but tab, and anything past ASCII.
_BAD_HEADER_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f-\xff]")
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
# A JSON text can hold a NUL only as this escape (a raw control byte is invalid JSON).
_ESCAPED_NUL = b"\\u0000"
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
MAX_ID = 2**63 - 1


class BadInput(ValueError):
    """Input the service does not take; ``where`` names the place (for the answer)."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.message, self.where = message, where


def check_text(value: str, where: str) -> None:
    """Refuse a NUL or a lone surrogate in ``value``."""
    found = _BAD_TEXT.search(value)
    if found:
        what = "a NUL character" if found.group() == "\x00" else "an unpaired surrogate"
        raise BadInput(f"'{where}' contains {what}.", where)


def loads(raw: bytes | str) -> Any:
    """The JSON value of a request body, or BadInput.

    orjson already refuses invalid UTF-8, lone surrogates and non-finite
    numbers; the walk adds depth, size of numbers and NUL (looked for only when
    the text has the escape, so ordinary bodies cost one pass over containers).
    """
    if isinstance(raw, str):
        check_text(raw, "body")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"The body is not valid JSON: {exc}", "body") from exc
    raw_bytes = raw.encode() if isinstance(raw, str) else raw
    look_for_nul = _ESCAPED_NUL in raw_bytes
    if not _acceptable(value, look_for_nul=look_for_nul):
        _walk(value, look_for_nul=look_for_nul)  # again, slowly, to name the place
    return value


def _acceptable(value: Any, *, look_for_nul: bool) -> bool:
    """The walk without paths: the gateway reads every body through this."""
    if type(value) is not dict and type(value) is not list:
        value = [value]
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return False
        if type(item) is dict:
            if look_for_nul and any(_BAD_TEXT.search(key) for key in item):
                return False
            children = item.values()
        else:
            children = item
        for child in children:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
            elif kind is str:
                if look_for_nul and _BAD_TEXT.search(child):
                    return False
            elif (kind is int or kind is float) and not -MAX_NUMBER <= child <= MAX_NUMBER:
                return False
    return True


def _walk(value: Any, *, look_for_nul: bool) -> None:
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise BadInput(f"The body nests deeper than {MAX_DEPTH} levels.", path or "body")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                if isinstance(key, str):
                    where = f"{path}.{key}" if path else key
                    if look_for_nul:
                        check_text(key, where)
                else:
                    where = f"{path}[{key}]"
                stack.append((child, depth + 1, where))
        elif isinstance(item, str):
            if look_for_nul:
                check_text(item, path or "body")
        elif isinstance(item, int | float) and abs(item) > MAX_NUMBER:
            raise BadInput(f"'{path or 'body'}' is out of range (±2^53).", path or "body")


def check_whole_number(value: str, where: str) -> None:
    """Refuse text that is a whole number beyond a 64-bit column (an id, a count)."""
    if len(value) < 19 or not _WHOLE_NUMBER.fullmatch(value):
        return
    digits = value.lstrip("+-").lstrip("0")
    # Compared as text first: int() refuses over 4300 digits.
    if len(digits) > 19 or int(digits or "0") > MAX_ID:
        raise BadInput(f"'{where}' is out of range.", where)


def check_path(path: str) -> None:
    check_text(path, "path")
    for segment in path.split("/"):
        check_whole_number(segment, "path")


def check_headers(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """Refuse headers past ``MAX_HEADER_BYTES`` or not printable ASCII (raw ASGI headers)."""
    headers = list(headers)
    if sum(len(name) + len(value) for name, value in headers) > MAX_HEADER_BYTES:
        raise BadInput(f"The request's headers exceed {MAX_HEADER_BYTES} bytes.", "headers")
    for name, value in headers:
        if _BAD_HEADER_BYTES.search(value) or _BAD_HEADER_BYTES.search(name):
            shown = name.decode("latin-1")[:40]
            raise BadInput(f"The {shown} header must be printable ASCII.", shown)


def check_query(pairs: Iterable[tuple[str, str]]) -> None:
    for key, value in pairs:
        check_text(key, "query")
        check_text(value, f"query parameter {key[:40]}")
        check_whole_number(value, f"query parameter {key[:40]}")


def scope_problem(scope: Mapping[str, Any]) -> BadInput | None:
    """What is wrong with an ASGI HTTP request's path, query or headers, if anything."""
    try:
        check_path(scope["path"])
        query = scope.get("query_string", b"").decode("latin-1")
        check_query(parse_qsl(query, keep_blank_values=True, errors="surrogateescape"))
        check_headers(scope.get("headers", ()))
    except BadInput as exc:
        return exc
    return None


def cookie_problem(cookies: Mapping[str, str]) -> BadInput | None:
    """A cookie can carry a NUL after Django unquotes it (``"\\000"``): refuse it
    before the session lookup sends it to the database."""
    try:
        for name, value in cookies.items():
            check_text(name, "cookie")
            check_text(value, f"cookie {name[:40]}")
    except BadInput as exc:
        return exc
    return None
