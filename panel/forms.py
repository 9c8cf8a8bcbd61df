"""Settings forms: posted text to validated changes with every error, settings to form values."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from mailapi.settings import SETTING_KEYS, Settings, SettingsError, parse_value, save_settings
from mailapi.settings.definitions import default_value
from panel.sessions import Session
from panel.web import Form, panel_state, source_address

# The errors key for a problem that belongs to no single field.
FORM_ERROR = "_form"


def error_for(exc: SettingsError) -> tuple[str, str]:
    """Split "key: message" into the field it belongs to and the message."""
    key, separator, message = str(exc).partition(": ")
    if separator and key in SETTING_KEYS:
        return key, message
    return FORM_ERROR, str(exc)


def form_values(settings: Settings, keys: Iterable[str]) -> dict[str, Any]:
    """The current values as a form shows them: booleans stay booleans, lists one per line."""
    values: dict[str, Any] = {}
    for key in keys:
        value = getattr(settings, key)
        if isinstance(value, list):
            values[key] = "\n".join(value)
        elif isinstance(value, bool):
            values[key] = value
        else:
            values[key] = str(value)
    return values


@dataclass
class Submission:
    """What a settings form posted: the validated changes, every error, the typed text."""

    changes: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    typed: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.errors

    def reject(self, key: str, message: str) -> None:
        self.errors.setdefault(key, message)

    def parse(self, key: str, text: str) -> None:
        """Validate `text` for `key`; keep it for redisplay either way."""
        self.typed[key] = text
        try:
            self.changes[key] = parse_value(key, text)
        except SettingsError as exc:
            self.reject(*error_for(exc))

    def secret(self, key: str, text: str) -> None:
        """A write-only value: changed only when something was typed, never redisplayed."""
        if not text:
            return
        try:
            self.changes[key] = parse_value(key, text)
        except SettingsError as exc:
            self.reject(*error_for(exc))

    async def save(self, request: Request, session: Session) -> Settings | None:
        """Store the changes (all or nothing, audited): the new snapshot, or None and an error.

        The snapshot comes from the save itself: the settings cache may lag it briefly.
        """
        if not self.valid:
            return None
        state = panel_state(request)
        try:
            saved = await asyncio.to_thread(save_settings, state.engine, dict(self.changes),
                                            actor=session.username,
                                            source=source_address(request), clock=state.clock)
        except SettingsError as exc:
            self.reject(*error_for(exc))
            return None
        # The page after the redirect, and a Test button pressed on it, must see this save.
        state.settings.invalidate()
        return saved

    def read(self, form: Form, keys: Iterable[str]) -> Submission:
        """Every key from the form; an unchecked box counts only where the form showed it."""
        for key in keys:
            if isinstance(default_value(key), bool):
                if form.has(f"{key}__present") or form.has(key):
                    self.typed[key] = self.changes[key] = form.checkbox(key)
            else:
                self.parse(key, form.get(key))
        return self


def redisplay(settings: Settings, keys: Iterable[str], typed: Mapping[str, Any]
              ) -> dict[str, Any]:
    """The saved values overlaid with what the admin typed (secrets are never in `typed`)."""
    values = form_values(settings, keys)
    values.update(typed)
    return values
