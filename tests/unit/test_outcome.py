"""mailapi.delivery.outcome: retry, fail or pause, decided from one failed attempt."""

import pytest

from mailapi.delivery.outcome import (
    Action,
    DeliveryFailure,
    Kind,
    Stage,
    classify,
    sanitize_detail,
)


def _classify(stage: Stage, kind: Kind = Kind.RESPONSE, code: int | None = None) -> Action:
    return classify(DeliveryFailure(stage=stage, kind=kind, detail="detail", code=code))


@pytest.mark.parametrize("stage", [Stage.MAIL, Stage.RCPT, Stage.DATA])
@pytest.mark.parametrize("code", [500, 550, 552, 553, 554, 599])
def test_5xx_on_message_stages_fails(stage: Stage, code: int) -> None:
    assert _classify(stage, code=code) is Action.FAIL


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("code", [421, 450, 451, 452, 454])
def test_4xx_anywhere_retries(stage: Stage, code: int) -> None:
    assert _classify(stage, code=code) is Action.RETRY


def test_421_at_connect_retries() -> None:
    assert _classify(Stage.CONNECT, code=421) is Action.RETRY


@pytest.mark.parametrize("code", [535, 534, 504, None])
def test_auth_rejection_pauses(code: int | None) -> None:
    assert _classify(Stage.AUTH, code=code) is Action.PAUSE


@pytest.mark.parametrize(("code", "action"), [(501, Action.PAUSE), (554, Action.PAUSE),
                                              (454, Action.RETRY), (421, Action.RETRY)])
def test_a_refused_starttls_pauses_unless_temporary(code: int, action: Action) -> None:
    # Refusing the STARTTLS it offered is as good as not offering it: every message would
    # fail the same way, so the queue pauses.
    assert _classify(Stage.TLS, code=code) is action


@pytest.mark.parametrize("stage", list(Stage))
def test_530_pauses_everywhere(stage: Stage) -> None:
    assert _classify(stage, code=530) is Action.PAUSE


@pytest.mark.parametrize("stage", [Stage.MAIL, Stage.RCPT, Stage.DATA])
def test_538_encryption_required_pauses(stage: Stage) -> None:
    assert _classify(stage, code=538) is Action.PAUSE


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("kind", [Kind.TLS, Kind.CONFIG])
def test_tls_and_config_pause(stage: Stage, kind: Kind) -> None:
    assert _classify(stage, kind, code=None) is Action.PAUSE
    assert _classify(stage, kind, code=550) is Action.PAUSE


@pytest.mark.parametrize("stage", list(Stage))
@pytest.mark.parametrize("kind", [Kind.NETWORK, Kind.TIMEOUT])
def test_network_and_timeout_retry(stage: Stage, kind: Kind) -> None:
    assert _classify(stage, kind) is Action.RETRY


@pytest.mark.parametrize("stage", [Stage.CONNECT, Stage.EHLO])
@pytest.mark.parametrize("code", [554, 550, 502])
def test_5xx_greeting_or_ehlo_retries(stage: Stage, code: int) -> None:
    assert _classify(stage, code=code) is Action.RETRY


@pytest.mark.parametrize("stage", [Stage.MAIL, Stage.RCPT, Stage.DATA])
def test_response_without_code_retries(stage: Stage) -> None:
    assert _classify(stage, code=None) is Action.RETRY


def test_failure_str_and_raise() -> None:
    failure = DeliveryFailure(Stage.RCPT, Kind.RESPONSE, "mailbox unavailable", 550)
    assert str(failure) == "rcpt: 550 mailbox unavailable"
    assert str(DeliveryFailure(Stage.CONNECT, Kind.TIMEOUT, "timed out")) == "connect: timed out"
    with pytest.raises(DeliveryFailure) as caught:
        raise failure
    assert caught.value.code == 550


def test_sanitize_strips_controls_and_joins_lines() -> None:
    text = "550-5.1.1 User unknown\r\n550 5.1.1\tsee\x00 <https://x>\x1b[31m\u2028end"
    assert sanitize_detail(text) == "550-5.1.1 User unknown 550 5.1.1 see <https://x> [31m end"


def test_sanitize_keeps_printable_unicode() -> None:
    assert sanitize_detail("  Boîte pleine ✓  ") == "Boîte pleine ✓"


def test_sanitize_truncates() -> None:
    assert sanitize_detail("x" * 300) == "x" * 300
    assert sanitize_detail("x" * 301) == "x" * 300 + "…"
    assert sanitize_detail("abcdef", limit=3) == "abc…"


def test_sanitize_empty() -> None:
    assert sanitize_detail("\r\n\x00") == ""
