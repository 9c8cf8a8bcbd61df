"""`mailapi queue list|retry|purge|resume`."""

from __future__ import annotations

import argparse
import time
from typing import Any

from mailapi import audit
from mailapi import queue as outbound
from mailapi.cli.common import ACTOR, SOURCE, open_checked
from mailapi.config import Config
from mailapi.db import read_transaction, write_transaction
from mailapi.events import recent_events
from mailapi.pause import clear_pause, read_pause
from mailapi.settings import load_settings
from mailapi.timestamps import format_utc


def register(groups: Any) -> None:
    parser = groups.add_parser("queue", help="inspect and act on the outbound queue")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="messages in the queue")
    listing.add_argument("--state", choices=outbound.STATES)
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--offset", type=int, default=0)
    listing.set_defaults(handler=list_command)
    show = commands.add_parser("show", help="one message and its delivery attempts")
    show.add_argument("id", type=int)
    show.set_defaults(handler=show_command)
    for name, handler, verb in (("retry", retry_command, "queue again"),
                                ("purge", purge_command, "delete for good")):
        command = commands.add_parser(name, help=f"{verb} a failed message, or all of them")
        target = command.add_mutually_exclusive_group(required=True)
        target.add_argument("id", nargs="?", type=int)
        target.add_argument("--all-failed", action="store_true")
        command.set_defaults(handler=handler)
    commands.add_parser("resume", help="lift a circuit-breaker pause now"
                        ).set_defaults(handler=resume_command)


def list_command(config: Config, arguments: argparse.Namespace) -> int:
    engine = open_checked(config)
    now = time.time()
    with read_transaction(engine) as connection:
        counts = outbound.counts_by_state(connection)
        rows = outbound.list_messages(connection, state=arguments.state, limit=arguments.limit,
                                      offset=arguments.offset)
        pause = read_pause(connection)
    print("  ".join(f"{state}: {count}" for state, count in counts.items()))
    if pause.paused_until is not None and pause.paused_until > now:
        print(f"PAUSED until {format_utc(pause.paused_until)}: {pause.reason}")
    if not rows:
        print("(no messages)")
        return 0
    print(f"{'id':>8}  {'state':<7} {'type':<18} {'attempts':>8}  {'next attempt':<27} "
          "recipient / last error")
    for row in rows:
        error = f"  [{row.failed_reason or 'error'}: {row.last_error}]" if row.last_error else ""
        print(f"{row.queue_id:>8}  {row.state:<7} {row.message_type:<18} {row.attempts:>8}  "
              f"{format_utc(row.next_attempt_at):<27} {row.recipient}{error}")
    return 0


def show_command(config: Config, arguments: argparse.Namespace) -> int:
    engine = open_checked(config)
    with read_transaction(engine) as connection:
        row = outbound.get_message(connection, arguments.id)
        events = recent_events(connection, queue_id=arguments.id, limit=100)
    if row is not None:
        for name, value in vars(row).items():
            print(f"{name:>16}: {value}")
    else:
        print(f"message {arguments.id} is not in the queue (delivered, purged or unknown)")
    for event in events:
        print(f"  {format_utc(event.at)}  {event.outcome:<9} {event.smtp_code or '':<4} "
              f"{event.detail or ''}")
    return 0 if row is not None or events else 1


def retry_command(config: Config, arguments: argparse.Namespace) -> int:
    engine = open_checked(config)
    now = time.time()
    with write_transaction(engine) as connection:
        max_age = load_settings(connection).message_max_age_seconds
        if arguments.all_failed:
            count = outbound.retry_all_failed(connection, now=now, max_age_seconds=max_age)
            target = "all failed"
        else:
            count = int(outbound.retry(connection, arguments.id, now=now,
                                       max_age_seconds=max_age))
            target = str(arguments.id)
        if count:
            audit.record(connection, actor=ACTOR, action="queue.retry", target=target,
                         source=SOURCE, detail=f"{count} message(s)")
    if not arguments.all_failed and not count:
        print(f"message {arguments.id} is not a failed message that may still be sent "
              "(its token expired or it is older than message_max_age_seconds)")
        return 1
    print(f"queued again: {count}")
    return 0


def purge_command(config: Config, arguments: argparse.Namespace) -> int:
    engine = open_checked(config)
    with write_transaction(engine) as connection:
        if arguments.all_failed:
            count = outbound.purge_all_failed(connection)
            target = "all failed"
        else:
            count = int(outbound.purge(connection, arguments.id))
            target = str(arguments.id)
        if count:
            audit.record(connection, actor=ACTOR, action="queue.purge", target=target,
                         source=SOURCE, detail=f"{count} message(s)")
    if not arguments.all_failed and not count:
        print(f"message {arguments.id} is not a failed message")
        return 1
    print(f"purged: {count}")
    return 0


def resume_command(config: Config, arguments: argparse.Namespace) -> int:
    engine = open_checked(config)
    with write_transaction(engine) as connection:
        clear_pause(connection, now=time.time())
        audit.record(connection, actor=ACTOR, action="queue.resume", target="queue",
                     source=SOURCE)
    print("queue resumed")
    return 0
