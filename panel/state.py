"""Everything the panel's handlers share, built once at start."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from sqlalchemy import Engine

from mailapi.config import Config
from mailapi.ratelimit import RateLimiter
from mailapi.settings import SettingsCache


def template_environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("panel", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return environment


@dataclass
class PanelState:
    engine: Engine
    config: Config
    settings: SettingsCache
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    templates: Environment = field(default_factory=template_environment)
    # The test buttons (SMTP, IMAP, POP3): per admin, in-process.
    test_limiter: RateLimiter | None = None
    test_limit_per_minute: int = 6

    def __post_init__(self) -> None:
        if self.test_limiter is None:
            self.test_limiter = RateLimiter(self.monotonic)

    @property
    def delivery_log_path(self) -> Path | None:
        return self.config.logging.delivery_log

    @property
    def root(self) -> str:
        return self.config.panel.root_path
