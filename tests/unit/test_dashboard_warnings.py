"""Which warnings the dashboard raises for which settings and pause states."""

from __future__ import annotations

import dataclasses

from mailapi.pause import PauseState
from mailapi.settings import Settings
from panel.views.dashboard import warnings

HEALTHY = dataclasses.replace(Settings(), webhook_secret="s" * 32,
                              allowed_sender_domain="example.org", smtp_host="smtp.example.org")
NOT_PAUSED = PauseState(None, None, 0, None)


def test_a_healthy_configuration_has_no_warning() -> None:
    assert warnings(HEALTHY, NOT_PAUSED, 1000.0) == []


def test_each_risky_setting_is_named() -> None:
    text = " ".join(warnings(dataclasses.replace(
        HEALTHY, webhook_secret="", allowed_sender_domain="", smtp_ignore_certificates=True),
        NOT_PAUSED, 1000.0))
    assert "No webhook secret" in text
    assert "No sender domain" in text
    assert "Certificate checking is off" in text


def test_an_active_circuit_breaker_pause_is_shown_with_its_reason() -> None:
    paused = PauseState(2000.0, "535 authentication failed", 1, HEALTHY.smtp_fingerprint())
    (first, *_rest) = warnings(HEALTHY, paused, 1000.0)
    assert "paused by the circuit breaker" in first and "535 authentication failed" in first
    # A pause recorded under other SMTP settings no longer applies.
    stale = dataclasses.replace(paused, settings_fingerprint="other")
    assert warnings(HEALTHY, stale, 1000.0) == []
