"""What may never reach a message header: line breaks and controls in every disguise."""

from __future__ import annotations

import email.policy
import re
from email.errors import HeaderParseError
from email.header import decode_header

# C0 controls, DEL, C1 controls (U+0085 NEL among them), and the Unicode line and paragraph
# separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Half of a UTF-16 pair on its own (JSON's "\ud800"): no encoding can write it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _control(text: str) -> str | None:
    match = _CONTROL.search(text)
    return f"U+{ord(match.group()):04X}" if match else None


def unsafe_character(text: str) -> str | None:
    """Describe the first character that could break a header line, or None if clean.

    Refused: C0 controls (CR, LF, NUL, TAB included), DEL, C1 controls, the Unicode line and
    paragraph separators, and the same hidden inside RFC 2047 encoded words; also lone
    surrogates, which no encoding can write. Encoded words are decoded the two ways Python's
    email package does (tolerating an empty charset, spaces and a missing terminator), so
    whatever it would turn into a line break is caught here.
    """
    found = _control(text)
    if found:
        return f"control character {found}"
    surrogate = _SURROGATE.search(text)
    if surrogate:
        return f"a lone surrogate U+{ord(surrogate.group()):04X}"
    if "=?" not in text:
        return None
    for decoded in _decodings(text):
        if decoded is None:
            return "an undecodable RFC 2047 encoded word"
        found = _control(decoded)
        if found:
            return f"an RFC 2047 encoded word hiding {found}"
    return None


def _decodings(text: str) -> list[str | None]:
    """The text as each of Python's decoders reads it; None where decoding fails."""
    results: list[str | None] = []
    try:
        parts = decode_header(text)
        results.append("".join(
            value.decode(charset or "latin-1", errors="strict") if isinstance(value, bytes)
            else value
            for value, charset in parts))
    except (HeaderParseError, ValueError, LookupError):
        results.append(None)  # unknown charset or bad bytes: treat as hostile
    try:
        results.append(str(email.policy.default.header_factory("subject", text)))
    except (HeaderParseError, ValueError, LookupError, IndexError):
        results.append(None)
    return results
