"""mailapi.payload: strict JSON and field validation with errors naming the field."""

from datetime import UTC, datetime
from typing import Any

import pytest

from mailapi.payload import PayloadError, WebhookPayload, parse_json_object, validate_payload

NOW = datetime(2026, 2, 21, 5, 35, 10, tzinfo=UTC).timestamp()
VALID: dict[str, Any] = {
    "type": "email_verification",
    "to": "user@example.com",
    "subject": "Verify your email",
    "token": "123456",
    "expiresAt": "2026-02-21T06:35:10Z",
}
MISSING = object()


def _payload(**changes: Any) -> dict[str, Any]:
    body = dict(VALID)
    for key, value in changes.items():
        if value is MISSING:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def _error(**changes: Any) -> PayloadError:
    with pytest.raises(PayloadError) as caught:
        validate_payload(_payload(**changes), now=NOW)
    return caught.value


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b'{"a":1}trailing',
        b"\xff\xfe{}",
        '{"to":"caf\u00e9"}'.encode("latin-1"),
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        b'{"a":1,"a":2}',
        b'{"outer":{"k":1,"k":1}}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    ],
)
def test_invalid_json_is_400(raw: bytes) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_json_object(raw)
    assert caught.value.status == 400
    assert caught.value.error == "invalid json"
    assert str(caught.value) == "invalid json"


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null", b"true", b'[{"a":1}]'])
def test_top_level_must_be_object(raw: bytes) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_json_object(raw)
    assert (caught.value.status, caught.value.error) == (400, "invalid json")


def test_valid_object_parsed() -> None:
    assert parse_json_object('{"to":"ü@x","n":[1,2]}'.encode()) == {"to": "ü@x", "n": [1, 2]}


def test_overflowing_number_is_not_infinity() -> None:
    with pytest.raises(PayloadError):
        parse_json_object(b'{"a":1e999}')


def test_valid_payload() -> None:
    payload = validate_payload(_payload(), now=NOW)
    assert isinstance(payload, WebhookPayload)
    assert payload.type == "email_verification"
    assert payload.to == "user@example.com"
    assert payload.subject == "Verify your email"
    assert payload.token == "123456"
    assert payload.expires_at == datetime(2026, 2, 21, 6, 35, 10, tzinfo=UTC)
    assert payload.expires_at_text == "2026-02-21T06:35:10Z"
    assert payload.link is None
    assert payload.from_local_part is None


@pytest.mark.parametrize("field", ["type", "to", "subject", "token", "expiresAt"])
def test_required_field_missing(field: str) -> None:
    error = _error(**{field: MISSING})
    assert (error.status, error.field) == (422, field)
    assert error.error == f"{field} is required"


@pytest.mark.parametrize("field", ["to", "subject", "token", "expiresAt", "link",
                                   "fromLocalPart"])
@pytest.mark.parametrize("value", [5, True, ["x"], {"x": 1}])
def test_field_wrong_type(field: str, value: object) -> None:
    error = _error(**{field: value})
    assert (error.status, error.field) == (422, field)
    assert error.error == f"{field} must be a string"


@pytest.mark.parametrize("value", ["newsletter", "", 5, ["email_verification"]])
def test_type_must_be_known(value: object) -> None:
    error = _error(type=value)
    assert (error.status, error.field) == (422, "type")


@pytest.mark.parametrize("field", ["to", "subject", "token", "expiresAt"])
@pytest.mark.parametrize("value", ["", "   "])
def test_required_field_empty(field: str, value: str) -> None:
    error = _error(**{field: value})
    assert (error.status, error.field) == (422, field)


@pytest.mark.parametrize(
    "to",
    [
        "a@example.com, b@example.com",
        "a@example.com;b@example.com",
        "Some One <a@example.com>",
        '"Some One" <a@example.com>',
        "@a:b@c",
        "@relay.example:user@example.com",
        "user@[192.0.2.1]",
        '"quoted"@example.com',
        "user@localhost",
        "no-at-sign",
        "ü@example.com",
    ],
)
def test_to_must_be_one_plain_address(to: str) -> None:
    error = _error(to=to)
    assert (error.status, error.field) == (422, "to")
    assert error.error.startswith("to is not a single valid e-mail address")


def test_idn_domain_converted_to_punycode() -> None:
    assert validate_payload(_payload(to="user@bücher.de"), now=NOW).to == "user@xn--bcher-kva.de"


def test_domain_normalised_local_part_kept() -> None:
    assert validate_payload(_payload(to="User@Example.COM"), now=NOW).to == "User@example.com"


@pytest.mark.parametrize("field", ["subject", "token", "to", "link", "fromLocalPart"])
@pytest.mark.parametrize("bad", ["\r\n", "\n", "\r", "\x00", "=?utf-8?q?=0D=0A?="])
def test_header_injection_is_400_naming_field(field: str, bad: str) -> None:
    value = "https://example.com/x" + bad if field == "link" else "abc" + bad + "Bcc: x@y"
    error = _error(**{field: value})
    assert (error.status, error.field) == (400, field)
    assert error.error.startswith(f"{field} contains ")


def test_subject_too_long() -> None:
    assert _error(subject="x" * 501).status == 422
    assert validate_payload(_payload(subject="x" * 500), now=NOW).subject == "x" * 500


@pytest.mark.parametrize("expires", ["2026-02-21T05:35:10Z", "2026-02-21T05:35:09.999Z",
                                     "2026-02-21T07:35:09+02:00", "2020-01-01T00:00:00Z"])
def test_expires_at_in_the_past(expires: str) -> None:
    error = _error(expiresAt=expires)
    assert (error.status, error.field, error.error) == (422, "expiresAt",
                                                        "expiresAt is in the past")


def test_expires_at_just_in_the_future_with_offset() -> None:
    payload = validate_payload(_payload(expiresAt="2026-02-21T07:35:10.001+02:00"), now=NOW)
    assert payload.expires_at.timestamp() == pytest.approx(NOW + 0.001)


@pytest.mark.parametrize("expires", ["tomorrow", "2026-02-30T00:00:00Z", "1771652110"])
def test_expires_at_not_a_timestamp(expires: str) -> None:
    error = _error(expiresAt=expires)
    assert (error.status, error.field) == (422, "expiresAt")


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(1)",
        "JavaScript:alert(document.cookie)",
        "data:text/html;base64,PHNjcmlwdD4=",
        "ftp://example.com/file",
        "//example.com/path",
        "/relative/path",
        "https://",
        "https://exa mple.com/",
        'https://example.com/"onmouseover',
        "https://example.com/<script>",
    ],
)
def test_bad_link_is_422(link: str) -> None:
    error = _error(link=link)
    assert (error.status, error.field) == (422, "link")


@pytest.mark.parametrize("link", ["https://example.com/verify?token=1&x=%20",
                                  "http://localhost:8080/v"])
def test_good_link_kept(link: str) -> None:
    assert validate_payload(_payload(link=link), now=NOW).link == link


def test_from_local_part_passed_through() -> None:
    payload = validate_payload(_payload(fromLocalPart="support"), now=NOW)
    assert payload.from_local_part == "support"
    assert _error(fromLocalPart="x" * 65).field == "fromLocalPart"


def test_digest_stable_and_token_sensitive() -> None:
    first = validate_payload(_payload(), now=NOW).digest()
    again = validate_payload(_payload(), now=NOW + 10).digest()
    other_token = validate_payload(_payload(token="654321"), now=NOW).digest()
    other_case = validate_payload(_payload(to="USER@example.com"), now=NOW).digest()
    assert first == again
    assert len(first) == 64
    assert other_token != first
    assert other_case == first  # recipient compared case-insensitively


@pytest.mark.parametrize("change", [{"subject": "Other"}, {"type": "password_reset"},
                                    {"link": "https://example.com/"},
                                    {"fromLocalPart": "support"},
                                    {"expiresAt": "2026-02-21T06:35:10.000Z"}])
def test_digest_changes_with_every_field(change: dict[str, str]) -> None:
    base = validate_payload(_payload(), now=NOW).digest()
    assert validate_payload(_payload(**change), now=NOW).digest() != base


@pytest.mark.parametrize("link", ["http://[", "https://a\uff03b/"])
def test_a_link_the_url_parser_cannot_read_is_a_422(link: str) -> None:
    with pytest.raises(PayloadError) as refused:
        validate_payload(_payload(link=link), now=NOW)
    assert (refused.value.status, refused.value.field) == (422, "link")


def test_an_encoded_word_in_the_address_is_refused() -> None:
    # Mail readers decode it to "evil@evil.example"@example.com: another address.
    with pytest.raises(PayloadError) as refused:
        validate_payload(_payload(to="=?utf-8?q?evil=40evil.example?=@example.com"), now=NOW)
    assert (refused.value.status, refused.value.field) == (422, "to")
