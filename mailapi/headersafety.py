"""What may never reach a message header: line breaks and controls in every disguise."""

from __future__ import annotations

import re
from email.errors import HeaderParseError
from email.header import decode_header

# RFC 2047 encoded word: =?charset?B|Q?text?=
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_LINE_SEPARATORS = {"\u2028", "\u2029", "\u0085"}


def unsafe_character(text: str) -> str | None:
    """Describe the first character that could break a header line, or None if clean.

    Refused: C0 controls (CR, LF, NUL, TAB included), DEL, C1 controls, the Unicode line and
    paragraph separators, and the same hidden inside RFC 2047 encoded words.
    """
    for char in text:
        code = ord(char)
        if code < 0x20 or code == 0x7F or 0x80 <= code <= 0x9F or char in _LINE_SEPARATORS:
            return f"control character U+{code:04X}"
    for word in _ENCODED_WORD.findall(text):
        decoded = _decode_encoded_word(word)
        if decoded is None:
            return "an undecodable RFC 2047 encoded word"
        for char in decoded:
            code = ord(char)
            if code < 0x20 or code == 0x7F or 0x80 <= code <= 0x9F or char in _LINE_SEPARATORS:
                return f"an RFC 2047 encoded word hiding U+{code:04X}"
    return None


def _decode_encoded_word(word: str) -> str | None:
    try:
        parts = decode_header(word)
    except (HeaderParseError, ValueError, LookupError):
        return None
    decoded = []
    for value, charset in parts:
        if isinstance(value, bytes):
            try:
                decoded.append(value.decode(charset or "ascii", errors="strict"))
            except (LookupError, UnicodeDecodeError):
                return None
        else:
            decoded.append(value)
    return "".join(decoded)
