"""Turning Google's answers into small, plain results: text out of HTML and
MIME parts, and the caps every tool result is held to."""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
from email.message import Message
from html.parser import HTMLParser
from typing import Any

# Elements whose text is never content (code, styling, metadata).
_SKIP = {"script", "style", "head", "title", "template", "noscript", "svg", "object"}
# Elements that begin and end a paragraph (a blank line), and those that begin
# and end a line.
_PARAGRAPH = {
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table", "blockquote",
    "pre", "hr", "section", "article",
}  # fmt: skip
_LINE = {"div", "li", "tr", "dt", "dd", "header", "footer"}


class _TextExtractor(HTMLParser):
    """Text with line breaks where the blocks were. A break is held until the
    next text, so nested blocks make one break, not one per tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping: list[str] = []
        self.breaks = 0

    def _break(self, count: int) -> None:
        self.breaks = max(self.breaks, count)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skipping.append(tag)
        elif tag == "br":
            self.breaks = min(self.breaks + 1, 2)
        elif tag in _PARAGRAPH:
            self._break(2)
        elif tag in _LINE:
            self._break(1)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _SKIP:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if self.skipping:
            if tag == self.skipping[-1]:
                self.skipping.pop()
        elif tag in _PARAGRAPH:
            self._break(2)
        elif tag in _LINE:
            self._break(1)

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if not data.strip():
            if not self.breaks:
                self.parts.append(" ")
            return
        if self.breaks and self.parts:
            self.parts.append("\n" * self.breaks)
        self.breaks = 0
        self.parts.append(data)


def html_to_text(markup: str) -> str:
    """The readable text of an HTML document: no tags, scripts, styles or comments."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    return tidy("".join(parser.parts))


def tidy(text: str) -> str:
    """Whitespace collapsed within lines, at most one blank line in a row."""
    lines = [re.sub(r"[ \t\u00a0\r\f\v]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def clip(value: Any, max_chars: int) -> str:
    """A short string field: at most ``max_chars`` characters, control characters out."""
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", str(value or ""))
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def cut(text: str, max_chars: int) -> tuple[str, bool]:
    """``text`` cut to ``max_chars`` characters, and whether it was cut."""
    return (text, False) if len(text) <= max_chars else (text[:max_chars], True)


def json_size(value: Any) -> int:
    """Bytes of ``value`` as the tool endpoint sends it (JSON, UTF-8)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def fit_items(items: list[Any], *, max_bytes: int) -> tuple[list[Any], bool]:
    """The leading items whose JSON fits in ``max_bytes``, and whether any were dropped."""
    kept, used = [], 2  # the brackets
    for item in items:
        used += json_size(item) + 1
        if used > max_bytes:
            return kept, True
        kept.append(item)
    return kept, False


def fit_text(text: str, *, max_bytes: int) -> tuple[str, bool]:
    """``text`` cut so its UTF-8 (JSON-escaped) size fits ``max_bytes``."""
    if json_size(text) <= max_bytes:
        return text, False
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits
        middle = (low + high + 1) // 2
        if json_size(text[:middle]) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    return text[:low], True


def decode_text(data: bytes, charset: str | None = None) -> str:
    """Bytes as text in ``charset`` (UTF-8 if unknown); undecodable bytes replaced."""
    try:
        text = data.decode(charset or "utf-8", errors="replace")
    except LookupError:
        text = data.decode("utf-8", errors="replace")
    return text.removeprefix("\ufeff")


def _base64url(data: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError):
        return b""


# A message's MIME tree is walked this deep and this wide at most.
MAX_PART_DEPTH = 12
MAX_PARTS = 200


def mail_headers(payload: dict[str, Any]) -> dict[str, str]:
    """The message's headers by lower-case name (the first of each)."""
    headers: dict[str, str] = {}
    for header in payload.get("headers") or []:
        if isinstance(header, dict):
            headers.setdefault(str(header.get("name", "")).lower(), str(header.get("value", "")))
    return headers


def mail_body(payload: dict[str, Any]) -> tuple[str, list[dict[str, Any]], str]:
    """A Gmail ``format=full`` payload's text, its attachments' metadata, and
    where the text came from ("plain", "html" or "none").

    The first text/plain part that is not an attachment wins; failing that the
    first text/html part, stripped of its markup. Attachments are never read.
    """
    plain: str | None = None
    markup: str | None = None
    attachments: list[dict[str, Any]] = []
    stack = [(payload, 0)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, depth = stack.pop(0)
        seen += 1
        if not isinstance(part, dict):
            continue
        mime = str(part.get("mimeType", "")).lower()
        body = part.get("body") or {}
        if part.get("filename"):
            attachments.append(
                {
                    "filename": clip(part["filename"], 200),
                    "mime_type": clip(mime, 100),
                    "size": body.get("size") if isinstance(body.get("size"), int) else None,
                }
            )
        elif mime in ("text/plain", "text/html") and body.get("data"):
            header = Message()
            header["Content-Type"] = mail_headers(part).get("content-type", mime)
            text = decode_text(_base64url(str(body["data"])), header.get_content_charset())
            if mime == "text/plain" and plain is None:
                plain = text
            elif mime == "text/html" and markup is None:
                markup = text
        if depth < MAX_PART_DEPTH:
            stack.extend((child, depth + 1) for child in part.get("parts") or [])
    if plain is not None:
        return tidy(plain), attachments, "plain"
    if markup is not None:
        return html_to_text(markup), attachments, "html"
    return "", attachments, "none"


def unescape_snippet(snippet: Any) -> str:
    """Gmail's snippets come HTML-escaped."""
    return html.unescape(str(snippet or ""))
