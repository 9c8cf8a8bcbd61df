"""The mailbox probe against misbehaving servers: silent, echoing, cut off; and its cleaning."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from mailapi.settings import save_settings
from panel.mailbox import (
    ANSWER_LIMIT,
    ConnectivityResult,
    MailboxTarget,
    clean,
    probe,
    run_test,
)
from tests.support.panel import Panel

PASSWORD = "hunter2-mailbox"


class ScriptedServer:
    """One connection: a greeting, then one scripted reply per line received.

    `{tag}` in a reply becomes the first word of the line it answers (IMAP's command tag).
    """

    def __init__(self, greeting: bytes, replies: list[bytes], host: str = "127.0.0.1") -> None:
        self.listener = socket.create_server((host, 0))
        self.port = int(self.listener.getsockname()[1])
        self.received: list[bytes] = []
        self._greeting, self._replies = greeting, replies
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _peer = self.listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.sendall(self._greeting)
            for reply in self._replies:
                line = lines.readline()
                if not line:
                    return
                self.received.append(line)
                connection.sendall(reply.replace(b"{tag}", line.split(b" ", 1)[0]))

    def close(self) -> None:
        self._thread.join(timeout=10)
        self.listener.close()


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """Accepts TCP connections (the kernel does) but never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    yield listener
    listener.close()


def target(protocol: str, port: int, *, username: str = "bob", password: str = PASSWORD,
           starttls: bool = False) -> MailboxTarget:
    return MailboxTarget(protocol, "127.0.0.1", port, starttls, username, password,
                         ignore_certificates=False, ca_file=None)


def test_a_server_echoing_the_password_never_gets_it_shown() -> None:
    long_answer = b"-ERR bad password " + PASSWORD.encode() + b" " + b"x" * 1000 + b"\r\n"
    server = ScriptedServer(b"+OK POP3 ready\r\n", [b"+OK\r\n", long_answer])
    try:
        result = probe(target("pop3", server.port), ["127.0.0.1"])
    finally:
        server.close()
    assert server.received == [b"USER bob\r\n", f"PASS {PASSWORD}\r\n".encode()]
    assert not result.ok
    assert result.failed_step == "login"
    assert result.answer.startswith("-ERR bad password ******** xxx")
    assert len(result.answer) <= ANSWER_LIMIT
    assert PASSWORD not in result.answer + " ".join(result.steps)


def test_a_missing_inbox_is_reported_with_the_servers_answer() -> None:
    server = ScriptedServer(b"* OK IMAP ready\r\n", [
        b"* CAPABILITY IMAP4rev1\r\n{tag} OK done\r\n",
        b"{tag} OK LOGIN done\r\n",
        b"{tag} NO Mailbox does not exist\r\n"])
    try:
        result = probe(target("imap", server.port), ["127.0.0.1"])
    finally:
        server.close()
    assert [line.split()[1] for line in server.received] == [b"CAPABILITY", b"LOGIN",
                                                             b"EXAMINE"]
    assert not result.ok
    assert result.steps[-1] == "logged in as bob"
    assert (result.failed_step, result.answer) == ("opening INBOX",
                                                   "NO Mailbox does not exist")


def test_a_silent_server_fails_the_greeting_step(silent_listener: socket.socket) -> None:
    port = int(silent_listener.getsockname()[1])
    result = probe(target("imap", port), ["127.0.0.1"], timeout=0.2)
    assert not result.ok
    assert (result.failed_step, result.answer) == ("connect", "no answer within 0.2 s")


def test_the_next_address_is_tried_when_one_refuses() -> None:
    # The same port on 127.0.0.2 answers; on 127.0.0.1 nothing listens there.
    server = ScriptedServer(b"+OK POP3 ready\r\n", [b"+OK bye\r\n"], host="127.0.0.2")
    no_login = MailboxTarget("pop3", "mail.test", server.port, False, "", "", False, None)
    try:
        result = probe(no_login, ["127.0.0.1", "127.0.0.2"], timeout=5)
    finally:
        server.close()
    assert result.ok, result
    assert result.steps == (f"connected to mail.test:{server.port} (127.0.0.2)",
                            "no user name set, login skipped", "logged out")
    assert server.received == [b"QUIT\r\n"]


def test_a_refused_connection_names_the_address() -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    refused_port = int(closed.getsockname()[1])
    closed.close()
    result = probe(target("pop3", refused_port), ["127.0.0.1"], timeout=5)
    assert result.failed_step == "connect"
    assert result.answer == (f"cannot connect to 127.0.0.1 port {refused_port}: "
                             "Connection refused")


def test_a_test_past_its_deadline_is_cut_off(silent_listener: socket.socket) -> None:
    port = int(silent_listener.getsockname()[1])

    async def scenario() -> tuple[ConnectivityResult, bytes]:
        result = await run_test(target("pop3s", port), [port], timeout=60, overall=0.3)
        # Still inside the loop (leaving it would wait for the worker thread): the thread's
        # connection was shut down rather than left waiting 60 s for the TLS handshake, so
        # after its ClientHello this side sees the end of the stream, long before 60 s.
        connection, _peer = silent_listener.accept()
        received = b""
        with connection:
            connection.settimeout(10)
            while chunk := connection.recv(4096):
                received += chunk
        return result, received

    result, received = asyncio.run(scenario())
    assert (result.ok, result.failed_step, result.answer) == (False, "test",
                                                              "gave up after 0.3 s")
    assert received.startswith(b"\x16\x03")  # a TLS handshake record


def test_control_characters_in_stored_credentials_stop_the_test_before_connecting() -> None:
    result = probe(target("pop3", 9, username="bob\r\nDELE 1"), ["127.0.0.1"])
    assert (result.ok, result.failed_step, result.steps) == (False, "settings", ())


def test_a_missing_ca_file_is_reported(tmp_path: Path) -> None:
    broken = MailboxTarget("imaps", "127.0.0.1", 993, False, "", "", False,
                           tmp_path / "missing.pem")
    result = probe(broken, ["127.0.0.1"])
    assert result.failed_step == "loading the trusted CAs ([smtp] ca_file)"


def test_clean_makes_one_short_line_and_masks_the_secret() -> None:
    assert clean("a\r\nb\tc  d") == "a b c d"
    assert clean("user pw123 rejected", "pw123") == "user ******** rejected"
    long = clean("y" * 1000)
    assert len(long) == ANSWER_LIMIT
    assert long.endswith("…")


def test_the_servers_answer_is_escaped_on_the_page(engine: Engine, tmp_path: Path) -> None:
    server = ScriptedServer(b"+OK POP3 ready\r\n", [
        b"+OK\r\n", b"-ERR <script>alert(1)</script> & <b>bold</b>\r\n"])
    panel = Panel(engine, tmp_path, extra_config=f"extra_test_ports = [{server.port}]")
    try:
        save_settings(engine, {"pop3_host": "127.0.0.1", "pop3_port": server.port,
                               "pop3_starttls": False, "pop3_username": "bob",
                               "pop3_password": PASSWORD}, actor="test", source="test")
        client = panel.logged_in("admin")
        client.page("/protocols/pop3")
        page = client.post("/protocols/pop3/test").text
    finally:
        panel.close()
        server.close()
    assert "-ERR &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "<script>alert" not in page
    assert PASSWORD not in page
