"""mailapi.headersafety: nothing that can break a header line, plain or RFC 2047 encoded."""

import base64

import pytest

from mailapi.headersafety import unsafe_character


def _b(text: str, charset: str = "utf-8") -> str:
    return f"=?{charset}?b?{base64.b64encode(text.encode(charset)).decode('ascii')}?="


@pytest.mark.parametrize(
    ("char", "code"),
    [
        ("\r", "000D"),
        ("\n", "000A"),
        ("\x00", "0000"),
        ("\t", "0009"),
        ("\x0b", "000B"),
        ("\x1f", "001F"),
        ("\x7f", "007F"),
        ("\x80", "0080"),
        ("\x85", "0085"),
        ("\x9f", "009F"),
        ("\u2028", "2028"),
        ("\u2029", "2029"),
    ],
)
def test_control_characters_refused(char: str, code: str) -> None:
    problem = unsafe_character(f"Hello{char}Bcc: victim@example.com")
    assert problem == f"control character U+{code}"


def test_first_offending_character_is_reported() -> None:
    assert unsafe_character("a\nb\rc") == "control character U+000A"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Verify your email",
        "Grüße aus Köln — 日本語 ✓ 🎉",
        "\u00a0non-breaking space and \u00ff",  # just above the C1 range
        "quotes \" ' < > ; : , @ = ?",
        "=?not an encoded word",
    ],
)
def test_clean_text_passes(text: str) -> None:
    assert unsafe_character(text) is None


@pytest.mark.parametrize(
    "word",
    [
        "=?utf-8?q?a=0D=0ABcc:x@y?=",
        "=?UTF-8?Q?a=0d=0aBcc:x@y?=",
        "=?utf-8?b?YQ0KQmNjOnhAeQ==?=",  # base64 of "a\r\nBcc:x@y"
        "=?utf-8?B?YQ0KQmNjOnhAeQ?=",  # the same without padding
        _b("a\r\nBcc: x@y"),
        _b("only\nLF"),
    ],
)
def test_encoded_word_hiding_line_break_refused(word: str) -> None:
    problem = unsafe_character(f"Subject text {word} more")
    assert problem is not None
    assert problem.startswith("an RFC 2047 encoded word hiding U+000")


@pytest.mark.parametrize(
    ("word", "code"),
    [
        ("=?utf-8?q?a=00?=", "0000"),
        ("=?utf-8?q?a=09b?=", "0009"),
        ("=?utf-8?q?=7F?=", "007F"),
        ("=?iso-8859-1?q?=85?=", "0085"),
        ("=?utf-8?q?=C2=85?=", "0085"),
        ("=?utf-8?q?=E2=80=A8?=", "2028"),
        ("=?utf-8?q?=E2=80=A9?=", "2029"),
    ],
)
def test_encoded_word_hiding_other_controls_refused(word: str, code: str) -> None:
    assert unsafe_character(word) == f"an RFC 2047 encoded word hiding U+{code}"


def test_encoded_word_without_spaces_around_is_still_checked() -> None:
    assert unsafe_character("x=?utf-8?q?=0A?=y") == "an RFC 2047 encoded word hiding U+000A"


@pytest.mark.parametrize(
    "word", ["=?utf-8?q?=FF?=", "=?no-such-charset?q?abc?=", "=?utf-8*en?q?=0D=0A?="]
)
def test_undecodable_encoded_word_refused(word: str) -> None:
    assert unsafe_character(word) == "an undecodable RFC 2047 encoded word"


@pytest.mark.parametrize(
    "text",
    [
        "=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
        "=?utf-8?b?R3LDvMOfZQ==?=",
        _b("Grüße aus Köln"),
        "=?iso-8859-1?q?caf=E9?= and =?utf-8?q?na=C3=AFve?=",
        "=?us-ascii?q?plain_words?=",
    ],
)
def test_harmless_encoded_words_pass(text: str) -> None:
    assert unsafe_character(text) is None


# Python's own decoders (email.header.decode_header and the policy.default parser) turn
# each of these into CR LF, but the encoded-word pattern in headersafety does not match
# them, so unsafe_character() reports nothing.
@pytest.mark.parametrize(
    "word",
    [
        "=??q?=0D=0A?=",  # empty charset: decode_header() gives b"\r\n"
        "=?utf-8?b?D Qo=?=",  # whitespace inside the encoded text
        "=?utf-8?q?=0D=0A",  # unterminated: policy.default still decodes it
    ],
)
def test_lenient_encoded_words_hiding_crlf_refused(word: str) -> None:
    assert unsafe_character(word) is not None


def test_a_lone_surrogate_is_refused() -> None:
    assert unsafe_character("Verify \ud800 now") == "a lone surrogate U+D800"
