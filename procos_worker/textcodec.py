"""Lossless storage of text PostgreSQL can't hold.

PostgreSQL TEXT and JSONB reject the NUL character, and lone surrogates (U+D800..U+DFFF) can't be
encoded to UTF-8 at all. A row whose text contains either is stored in the form ``procos-escape-v1``
and marked so in ``content_data->>'text_encoding'``: every backslash is doubled, NUL becomes ``\\0``
and a lone surrogate becomes ``\\udXXX`` (lower-case hex). Rows without such characters are stored
byte for byte, with no marker. The read API decodes marked rows back to the identical string.
"""

from __future__ import annotations

import re

__all__ = ["ESCAPE_ENCODING", "decode", "encode", "needs_escape"]

ESCAPE_ENCODING = "procos-escape-v1"

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_TO_ESCAPE = re.compile("[\\\\\x00\ud800-\udfff]")
_ESCAPED = re.compile(r"\\(\\|0|ud[89a-f][0-9a-f]{2})")


def needs_escape(text: str) -> bool:
    """True when PostgreSQL can't store ``text`` as it is."""
    if text.isascii():
        return "\x00" in text
    return _UNSTORABLE.search(text) is not None


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    if char == "\\":
        return "\\\\"
    if char == "\x00":
        return "\\0"
    return f"\\u{ord(char):04x}"


def _unescape(match: re.Match[str]) -> str:
    token = match.group(1)
    if token == "\\":
        return "\\"
    if token == "0":
        return "\x00"
    return chr(int(token[1:], 16))


def encode(text: str) -> str:
    """The ``procos-escape-v1`` form of ``text`` (only for rows where some text needs it)."""
    return _TO_ESCAPE.sub(_escape_char, text)


def decode(text: str) -> str:
    """Inverse of ``encode``."""
    return _ESCAPED.sub(_unescape, text)
