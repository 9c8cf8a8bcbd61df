"""Filling the queue fast: a few messages composed for real, cloned with fresh identities."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from bench.environment import SENDER_DOMAIN
from bench.loadgen import webhook_body
from mailapi.composition import new_message_id
from mailapi.db import write_transaction
from mailapi.intake import RendererCache, build_message
from mailapi.payload import parse_json_object, validate_payload
from mailapi.queue import NewMessage, enqueue_many
from mailapi.settings import Settings

TEMPLATES = 16  # distinct messages composed by build_message; the rest are clones


def composed_messages(count: int, tag: str) -> list[NewMessage]:
    """`count` queue rows like the receiver makes, each with its own digest and Message-ID.

    Composing every one would cost ~3 ms each, so TEMPLATES messages go through the real
    validate_payload + build_message path and the others copy one of them with a new
    Message-ID (in the row and in the bytes) and a new digest.
    """
    settings = Settings(webhook_secret="bench", allowed_sender_domain=SENDER_DOMAIN)
    renderer = RendererCache().get(settings)
    now = time.time()
    expires = (datetime.now(UTC) + timedelta(hours=2)).isoformat(timespec="milliseconds")
    expires = expires.replace("+00:00", "Z")
    originals: list[NewMessage] = []
    for index in range(min(TEMPLATES, count)):
        payload = validate_payload(
            parse_json_object(webhook_body(f"{tag}-{index}", index, expires)), now=now)
        originals.append(build_message(payload, settings, renderer, now=now))
    messages: list[NewMessage] = []
    for index in range(count):
        original = originals[index % len(originals)]
        if index < len(originals):
            messages.append(original)
            continue
        message_id = new_message_id(SENDER_DOMAIN)
        data = original.message.replace(original.message_id.encode("ascii"),
                                        message_id.encode("ascii"), 1)
        digest = hashlib.sha256(f"{tag}-clone-{index}".encode()).hexdigest()
        messages.append(dataclasses.replace(original, message_id=message_id, message=data,
                                            digest=digest))
    return messages


def fill_queue(engine: Engine, messages: list[NewMessage], chunk: int = 2_500) -> float:
    """enqueue_many in big write transactions; returns the seconds it took."""
    started = time.perf_counter()
    for start in range(0, len(messages), chunk):
        with write_transaction(engine) as connection:
            enqueue_many(connection, messages[start:start + chunk], time.time())
    return time.perf_counter() - started
