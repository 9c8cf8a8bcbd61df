"""Runtime settings: typed definitions with defaults, stored in the database, cached per process."""

from mailapi.settings.definitions import (
    SECRET_KEYS,
    SETTING_KEYS,
    Settings,
    SettingsError,
    describe,
    parse_value,
)
from mailapi.settings.store import SettingsCache, load_settings, masked, save_settings

__all__ = [
    "SECRET_KEYS",
    "SETTING_KEYS",
    "Settings",
    "SettingsCache",
    "SettingsError",
    "describe",
    "load_settings",
    "masked",
    "parse_value",
    "save_settings",
]
