"""`mailapi status`: are the daemons alive, how deep is the queue, how is delivery going."""

from __future__ import annotations

import argparse
import time
from typing import Any

from mailapi import queue as outbound
from mailapi.cli.common import open_checked
from mailapi.config import Config
from mailapi.db import read_transaction
from mailapi.events import outcome_counts_since, recent_events
from mailapi.heartbeat import read_all
from mailapi.pause import read_pause
from mailapi.timestamps import format_utc

# A daemon writes its heartbeat every 5 seconds; three missed beats mean it is not running.
STALE_AFTER_SECONDS = 15.0


def register(groups: Any) -> None:
    parser = groups.add_parser("status", help="daemons, queue depth and recent deliveries")
    parser.set_defaults(handler=status_command)


def status_command(config: Config, arguments: argparse.Namespace) -> int:
    engine = open_checked(config)
    now = time.time()
    with read_transaction(engine) as connection:
        beats = {beat.process: beat for beat in read_all(connection)}
        counts = outbound.counts_by_state(connection)
        pause = read_pause(connection)
        last_hour = outcome_counts_since(connection, now - 3600)
        last_day = outcome_counts_since(connection, now - 86_400)
        errors = [event for event in recent_events(connection, limit=50)
                  if event.outcome != "delivered"][:5]
    healthy = True
    for process in ("receiver", "worker"):
        beat = beats.get(process)
        if beat is None:
            print(f"{process:<9} never started")
            healthy = False
            continue
        age = now - beat.beat_at
        alive = age <= STALE_AFTER_SECONDS
        healthy &= alive
        state = "alive" if alive else f"NOT RUNNING (last heartbeat {age:.0f} s ago)"
        print(f"{process:<9} {state}; pid {beat.pid} on {beat.hostname}; {beat.status}")
    print("queue     " + ", ".join(f"{state} {count}" for state, count in counts.items()))
    if pause.paused_until is not None and pause.paused_until > now:
        print(f"PAUSED    until {format_utc(pause.paused_until)}: {pause.reason}")
    for label, window in (("last hour", last_hour), ("last day", last_day)):
        print(f"{label:<9} " + (", ".join(f"{k} {v}" for k, v in sorted(window.items()))
                                or "no delivery attempts"))
    for event in errors:
        print(f"  {format_utc(event.at)}  #{event.queue_id} {event.outcome}: {event.detail}")
    return 0 if healthy else 1
