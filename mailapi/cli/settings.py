"""`mailapi settings show|get|set`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mailapi.cli.common import ACTOR, SOURCE, open_checked
from mailapi.config import Config
from mailapi.db import read_transaction
from mailapi.settings import (
    SECRET_KEYS,
    SETTING_KEYS,
    SettingsError,
    describe,
    load_settings,
    masked,
    parse_value,
    save_settings,
)
from mailapi.settings.definitions import SMTP_SECURITY_PRESETS


def register(groups: Any) -> None:
    parser = groups.add_parser("settings", help="read and change runtime settings")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    show = commands.add_parser("show", help="every setting, secrets masked")
    show.add_argument("--json", action="store_true", help="print as JSON")
    show.set_defaults(handler=show_command)
    get = commands.add_parser("get", help="one setting (secrets masked)")
    get.add_argument("key")
    get.set_defaults(handler=get_command)
    set_ = commands.add_parser("set", help="change one setting; '-' reads the value from stdin")
    set_.add_argument("key")
    set_.add_argument("value")
    set_.set_defaults(handler=set_command)


def _format(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | bool) else str(value)


def show_command(config: Config, arguments: argparse.Namespace) -> int:
    engine = open_checked(config)
    with read_transaction(engine) as connection:
        values = masked(load_settings(connection))
    if arguments.json:
        print(json.dumps(values, indent=2, sort_keys=True))
        return 0
    for key in ("revision", *SETTING_KEYS):
        value = _format(values[key])
        if "\n" in value:
            value = value.splitlines()[0] + " …"
        print(f"{key} = {value}")
    return 0


def get_command(config: Config, arguments: argparse.Namespace) -> int:
    if arguments.key not in SETTING_KEYS:
        raise SettingsError(f"unknown setting {arguments.key!r}")
    engine = open_checked(config)
    with read_transaction(engine) as connection:
        values = masked(load_settings(connection))
    print(_format(values[arguments.key]))
    return 0


def set_command(config: Config, arguments: argparse.Namespace) -> int:
    key = arguments.key
    if key not in SETTING_KEYS:
        raise SettingsError(f"unknown setting {key!r}; `mailapi settings show` lists them")
    text = sys.stdin.read().rstrip("\n") if arguments.value == "-" else arguments.value
    value = parse_value(key, text)
    engine = open_checked(config)
    saved = save_settings(engine, {key: value}, actor=ACTOR, source=SOURCE)
    shown = "(secret, not shown)" if key in SECRET_KEYS else _format(value)
    print(f"{key} = {shown}  ({describe(key)})")
    if key in ("smtp_security", "smtp_port"):
        usual = SMTP_SECURITY_PRESETS[saved.smtp_security]
        if saved.smtp_port != usual:
            print(f"note: smtp_port is {saved.smtp_port}; {saved.smtp_security} usually runs "
                  f"on {usual} (25 plain, 587 starttls, 465 ssl)")
    return 0
