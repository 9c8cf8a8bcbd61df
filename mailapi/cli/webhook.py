"""`mailapi webhook send`: sign a test webhook with the configured secret and post it."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from mailapi.cli.common import open_checked
from mailapi.config import Config, secret_overrides
from mailapi.db import read_transaction
from mailapi.settings import load_settings
from mailapi.signatures import sign


def register(groups: Any) -> None:
    parser = groups.add_parser("webhook", help="send a signed test webhook to the receiver")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    send = commands.add_parser("send", help="sign with the configured secret and POST")
    send.add_argument("--to", required=True, help="recipient address")
    send.add_argument("--type", default="email_verification",
                      choices=("email_verification", "password_reset"))
    send.add_argument("--subject", default="Verify your email")
    send.add_argument("--token", default=None, help="default: a timestamped test token")
    send.add_argument("--link", default=None)
    send.add_argument("--url", default=None,
                      help="receiver URL (default: http://127.0.0.1:<port>/webhook/outbound-email)")
    send.set_defaults(handler=send_command)


def send_command(config: Config, arguments: argparse.Namespace) -> int:
    engine = open_checked(config)
    with read_transaction(engine) as connection:
        secret = load_settings(connection).webhook_secret
    engine.dispose()
    # The receiver signs-checks with the file secret when the config names one.
    secret = secret_overrides(config, ("webhook_secret",)).get("webhook_secret", secret)
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "type": arguments.type, "to": arguments.to, "subject": arguments.subject,
        "token": arguments.token or f"test-{int(now.timestamp())}",
        "expiresAt": (now + timedelta(hours=1)).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
    }
    if arguments.link:
        body["link"] = arguments.link
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if secret:
        timestamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        headers["X-TransLife-Timestamp"] = timestamp
        headers["X-TransLife-Signature"] = sign(secret, timestamp, raw)
    url = arguments.url or (
        f"http://127.0.0.1:{config.receiver.port}/webhook/outbound-email")
    request = urllib.request.Request(url, data=raw, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            print(response.status, response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.code, exc.read().decode())
        return 1
    except urllib.error.URLError as exc:
        print(f"cannot reach {url}: {exc.reason}")
        return 1
