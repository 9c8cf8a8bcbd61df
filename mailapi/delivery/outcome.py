"""What an SMTP outcome means for the message: retry, fail or pause the whole queue."""

from __future__ import annotations

from enum import Enum


class Stage(Enum):
    CONNECT = "connect"
    TLS = "tls"
    EHLO = "ehlo"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


class Kind(Enum):
    """The family of a failure, before any decision is taken on it."""

    RESPONSE = "response"  # the server answered with a reply code
    NETWORK = "network"  # refused, reset, disconnected, garbage
    TIMEOUT = "timeout"
    TLS = "tls"  # handshake, certificate, STARTTLS missing
    CONFIG = "config"  # our own settings forbid the step (AUTH over plaintext, no host)


class Action(Enum):
    RETRY = "retry"
    FAIL = "fail"
    PAUSE = "pause"  # retry later *and* stop the queue: every message would meet the same


class DeliveryFailure(Exception):
    """One failed attempt: the stage it failed at, its kind, the reply code and text.

    A plain exception class (not a frozen dataclass): exceptions get their traceback
    assigned while they propagate.
    """

    def __init__(self, stage: Stage, kind: Kind, detail: str, code: int | None = None) -> None:
        super().__init__(stage, kind, detail, code)
        self.stage = stage
        self.kind = kind
        self.detail = detail
        self.code = code

    def __str__(self) -> str:
        code = f"{self.code} " if self.code is not None else ""
        return f"{self.stage.value}: {code}{self.detail}"


def classify(failure: DeliveryFailure) -> Action:
    """Decide the fate of a message from one failed attempt.

    - 5xx on MAIL, RCPT or DATA concerns this message: fail it (kept, retryable by an admin).
    - Authentication and TLS failures (a 5xx answer to STARTTLS among them: refusing the
      STARTTLS it offered is as good as not offering it), and our own configuration refusing
      a step, concern every message: pause the queue rather than burning each message's
      attempts.
    - Everything else (4xx anywhere, network trouble, timeouts, a 5xx greeting or EHLO from a
      server that is refusing service) is temporary: retry with backoff.
    """
    if failure.kind in (Kind.TLS, Kind.CONFIG):
        return Action.PAUSE
    if failure.stage in (Stage.AUTH, Stage.TLS) and failure.kind is Kind.RESPONSE:
        return Action.PAUSE if failure.code is None or failure.code >= 500 else Action.RETRY
    if failure.kind is Kind.RESPONSE and failure.code is not None:
        if failure.code in (530, 538):
            return Action.PAUSE  # authentication / encryption required: our configuration
        if 500 <= failure.code < 600 and failure.stage in (Stage.MAIL, Stage.RCPT, Stage.DATA):
            return Action.FAIL
    return Action.RETRY


def sanitize_detail(text: str, limit: int = 300) -> str:
    """A server's reply text made safe to store and show: one line, printable, bounded."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text)
    cleaned = " ".join(cleaned.split())
    return cleaned[:limit] + ("…" if len(cleaned) > limit else "")
