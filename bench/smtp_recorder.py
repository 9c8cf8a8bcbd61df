"""An aiosmtpd server that timestamps the end of each DATA, run as
`python -m bench.smtp_recorder --port N`.

For every message it prints one line `<token> <time.time() when DATA ended>`, where the token
is the first `lat-...` word found in the message (the webhook put it in the subject).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import time
from typing import Any

from aiosmtpd.smtp import SMTP

TOKEN = re.compile(rb"lat-[0-9a-f]+-\d+")


class Recorder:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        received_at = time.time()
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "replace")
        found = TOKEN.search(content)
        token = found.group(0).decode("ascii") if found else "-"
        sys.stdout.write(f"{token} {received_at:.6f}\n")
        sys.stdout.flush()
        return "250 2.0.0 Ok: recorded"


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    handler = Recorder()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="recorder", decode_data=False), host, port)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="SMTP server timestamping DATA")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    asyncio.run(_serve(arguments.host, arguments.port))


if __name__ == "__main__":
    main()
