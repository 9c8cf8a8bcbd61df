"""The delivery baseline: a bare aiosmtplib loop, run as `python -m bench.smtp_baseline`.

It reads the queued messages from the database before timing (read-only, nothing changes),
then sends them all over `--sessions` reused connections with MAIL, RCPT and DATA, exactly
the commands the worker uses, and prints one JSON line: messages, seconds, rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import time

import aiosmtplib

Message = tuple[str, str, bytes]


def load_messages(database: str, limit: int) -> list[Message]:
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT envelope_sender, recipient, message FROM outbound_queue ORDER BY id LIMIT ?",
            (limit,)).fetchall()
    finally:
        connection.close()
    return [(str(sender), str(recipient), bytes(data)) for sender, recipient, data in rows]


async def deliver(host: str, port: int, sessions: int, messages: list[Message],
                  deadline: float) -> int:
    pending = list(reversed(messages))
    sent = 0

    async def session() -> None:
        nonlocal sent
        client = aiosmtplib.SMTP(hostname=host, port=port, timeout=30, start_tls=False)
        await client.connect()
        await client.ehlo()
        try:
            while pending and time.monotonic() < deadline:
                sender, recipient, data = pending.pop()
                await client.mail(sender)
                await client.rcpt(recipient)
                await client.data(data)
                sent += 1
        finally:
            await client.quit()

    await asyncio.gather(*(session() for _ in range(sessions)))
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description="bare aiosmtplib delivery loop")
    parser.add_argument("--database", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--limit", type=int, default=10_000)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    arguments = parser.parse_args()
    messages = load_messages(arguments.database, arguments.limit)
    started = time.perf_counter()
    cpu_started = time.process_time()
    sent = asyncio.run(deliver(arguments.host, arguments.port, arguments.sessions, messages,
                               time.monotonic() + arguments.max_seconds))
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"messages": sent, "loaded": len(messages), "seconds": seconds,
                      "rate": sent / seconds if seconds else 0.0,
                      "cpu_ms_per_message": 1000 * cpu / sent if sent else None,
                      "peak_rss_kb": peak_rss_kb}), flush=True)


if __name__ == "__main__":
    main()
