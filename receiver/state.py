"""What the receiver's request handlers share, built once in main() and passed in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from mailapi.intake import RendererCache
from mailapi.ratelimit import RateLimiter
from mailapi.settings import SettingsCache
from receiver.groupcommit import GroupCommitter


@dataclass
class ReceiverState:
    engine: Engine
    settings: SettingsCache
    renderers: RendererCache
    committer: GroupCommitter
    rate_limiter: RateLimiter
    clock: Callable[[], float]
    max_body_bytes: int
