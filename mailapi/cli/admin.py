"""`mailapi admin create|password|disable|enable|list` and `mailapi apikey create|revoke|list`."""

from __future__ import annotations

import argparse
import getpass
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from mailapi import accounts
from mailapi.accounts import AccountError
from mailapi.cli.common import ACTOR, SOURCE, open_checked
from mailapi.config import Config
from mailapi.db import read_transaction, write_transaction
from mailapi.timestamps import format_utc

DAY = 86400


def register(groups: Any) -> None:
    admin = groups.add_parser("admin", help="control panel administrators")
    commands = admin.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = commands.add_parser("create", help="a new admin (password prompted twice)")
    create.add_argument("username")
    _password_options(create)
    create.set_defaults(handler=create_command)
    password = commands.add_parser("password", help="set a new password; ends their sessions")
    password.add_argument("username")
    _password_options(password)
    password.set_defaults(handler=password_command)
    for name, handler, text in (("disable", disable_command, "refuse logins, end sessions"),
                                ("enable", enable_command, "allow logins again")):
        command = commands.add_parser(name, help=text)
        command.add_argument("username")
        command.set_defaults(handler=handler)
    commands.add_parser("list", help="every admin").set_defaults(handler=list_command)

    apikey = groups.add_parser("apikey", help="keys for the panel's admin JSON API")
    key_commands = apikey.add_subparsers(dest="command", required=True, metavar="COMMAND")
    key_create = key_commands.add_parser(
        "create", help="a new key, printed once on stdout (details on stderr)")
    key_create.add_argument("name")
    key_create.add_argument("--scope", choices=accounts.SCOPES, required=True)
    key_create.add_argument("--expires-days", type=int, metavar="N",
                            help="stop working after N days (default: never)")
    key_create.set_defaults(handler=key_create_command)
    key_revoke = key_commands.add_parser("revoke", help="stop a key from working, for good")
    key_revoke.add_argument("id", type=int)
    key_revoke.set_defaults(handler=key_revoke_command)
    key_commands.add_parser("list", help="every key (never the key itself)"
                            ).set_defaults(handler=key_list_command)


def _password_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--password-file", type=Path, metavar="FILE",
                        help="read the password from FILE (one trailing newline is dropped); "
                        "refused if other users may read it")
    source.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input")


def _strip_newline(text: str) -> str:
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            return text[: -len(ending)]
    return text


def _read_password_file(path: Path) -> str:
    try:
        with path.open(encoding="utf-8") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if stat.S_ISREG(mode) and mode & (stat.S_IROTH | stat.S_IWOTH):
                raise AccountError(f"{path} can be read or written by any user on this "
                                   f"machine; run `chmod 600 {path}` and try again")
            return _strip_newline(handle.read())
    except (OSError, UnicodeDecodeError) as exc:
        raise AccountError(f"cannot read the password file: {exc}") from None


def read_password(arguments: argparse.Namespace, username: str) -> str:
    """The new password from --password-file, --password-stdin or a prompt (asked twice)."""
    if arguments.password_file is not None:
        password = _read_password_file(arguments.password_file)
    elif arguments.password_stdin:
        password = _strip_newline(sys.stdin.read())
    elif not sys.stdin.isatty():
        raise AccountError("no terminal to ask for the password on; use --password-file FILE "
                           "or --password-stdin")
    else:
        try:
            password = getpass.getpass(f"New password for {username}: ")
            again = getpass.getpass("The same password again: ")
        except (EOFError, KeyboardInterrupt):
            raise AccountError("no password entered; nothing was changed") from None
        if again != password:
            raise AccountError("the two passwords differ; nothing was changed")
    accounts.check_password(password, username)
    return password


def _find(connection: Connection, username: str) -> accounts.Admin:
    admin = accounts.find_admin(connection, username)
    if admin is None:
        raise AccountError(f"no admin named {username!r}; `mailapi admin list` shows them")
    return admin


def create_command(config: Config, arguments: argparse.Namespace) -> int:
    username = accounts.check_username(arguments.username)
    engine = open_checked(config)
    with read_transaction(engine) as connection:
        if accounts.find_admin(connection, username) is not None:  # before asking a password
            raise AccountError(f"an admin named {username!r} already exists")
    password = read_password(arguments, username)
    with write_transaction(engine) as connection:
        admin = accounts.create_admin(connection, username, password, actor=ACTOR,
                                      source=SOURCE, now=time.time())
    print(f"admin {admin.username} created (id {admin.id})")
    return 0


def password_command(config: Config, arguments: argparse.Namespace) -> int:
    engine = open_checked(config)
    with read_transaction(engine) as connection:
        admin = _find(connection, arguments.username)
    password = read_password(arguments, admin.username)
    with write_transaction(engine) as connection:
        ended = accounts.set_password(connection, admin.id, password, actor=ACTOR,
                                      source=SOURCE, now=time.time())
    print(f"password of {admin.username} changed; {ended} session(s) ended")
    return 0


def _set_disabled(config: Config, username: str, disabled: bool) -> int:
    engine = open_checked(config)
    with write_transaction(engine) as connection:
        admin = accounts.set_disabled(connection, _find(connection, username).id, disabled,
                                      actor=ACTOR, source=SOURCE, now=time.time())
    print(f"admin {admin.username} is {'disabled' if admin.disabled else 'enabled'}")
    return 0


def disable_command(config: Config, arguments: argparse.Namespace) -> int:
    return _set_disabled(config, arguments.username, True)


def enable_command(config: Config, arguments: argparse.Namespace) -> int:
    return _set_disabled(config, arguments.username, False)


def _when(timestamp: float | None, empty: str = "never") -> str:
    return format_utc(timestamp)[:19] + "Z" if timestamp else empty


def list_command(config: Config, arguments: argparse.Namespace) -> int:
    engine = open_checked(config)
    with read_transaction(engine) as connection:
        admins = accounts.list_admins(connection)
    if not admins:
        print("(no admins: create one with `mailapi admin create NAME`)")
        return 0
    print(f"{'id':>5}  {'username':<24} {'state':<8} {'created':<20} {'last login':<20} "
          "password changed")
    for admin in admins:
        state = "disabled" if admin.disabled else "active"
        print(f"{admin.id:>5}  {admin.username:<24} {state:<8} {_when(admin.created_at):<20} "
              f"{_when(admin.last_login_at):<20} {_when(admin.password_changed_at)}")
    return 0


def key_create_command(config: Config, arguments: argparse.Namespace) -> int:
    days = arguments.expires_days
    if days is not None and not 1 <= days <= 36500:
        raise AccountError("--expires-days: from 1 to 36500")
    now = time.time()
    engine = open_checked(config)
    with write_transaction(engine) as connection:
        key, plain = accounts.create_api_key(
            connection, arguments.name, arguments.scope,
            expires_at=None if days is None else now + days * DAY, actor=ACTOR, source=SOURCE,
            now=now)
    # stdout carries the key alone, so `KEY=$(mailapi ... apikey create ...)` captures it.
    print(f"API key {key.id} {key.name!r} ({key.prefix}…), scope {key.scope}, expires "
          f"{_when(key.expires_at)}. It is shown only this once.", file=sys.stderr)
    print(plain)
    return 0


def key_revoke_command(config: Config, arguments: argparse.Namespace) -> int:
    engine = open_checked(config)
    with write_transaction(engine) as connection:
        key = accounts.revoke_api_key(connection, arguments.id, actor=ACTOR, source=SOURCE,
                                      now=time.time())
    print(f"API key {key.id} {key.name!r} ({key.prefix}…) revoked at {_when(key.revoked_at)}")
    return 0


def key_list_command(config: Config, arguments: argparse.Namespace) -> int:
    engine = open_checked(config)
    now = time.time()
    with read_transaction(engine) as connection:
        keys = accounts.list_api_keys(connection)
    if not keys:
        print("(no API keys)")
        return 0
    print(f"{'id':>5}  {'name':<24} {'prefix':<10} {'scope':<6} {'state':<8} "
          f"{'created':<20} {'created by':<16} {'expires':<20} last used")
    for key in keys:
        print(f"{key.id:>5}  {key.name:<24} {key.prefix:<10} {key.scope:<6} "
              f"{key.state(now):<8} "
              f"{_when(key.created_at):<20} {key.created_by:<16} {_when(key.expires_at):<20} "
              f"{_when(key.last_used_at)}")
    return 0
