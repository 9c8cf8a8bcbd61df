"""IMAP and POP3 clients pinned to the address the guard checked, and cut off on demand."""

from __future__ import annotations

import imaplib
import poplib
import socket
import ssl
import threading
from contextlib import suppress


class Unreachable(Exception):
    """The TCP connection itself failed.

    Deliberately not an OSError, so that callers can tell it from a failure on an open
    connection: only this one makes trying the host's next address worthwhile.
    """


class SocketWatch:
    """Duplicates of the test's sockets, so a test past its deadline can be cut off."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._aborted = False

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock.dup())
            if self._aborted:  # connected after the deadline: end it straight away
                self._shutdown()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            self._shutdown()

    def _shutdown(self) -> None:
        # shutdown() acts on the connection, not the descriptor: a recv() blocked in the
        # worker thread (even under TLS, which wraps the same connection) returns at once.
        for sock in self._sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _open_socket(address: str, port: int, *, server_name: str, tls: ssl.SSLContext | None,
                 timeout: float | None, watch: SocketWatch) -> socket.socket:
    # Connect to the address the guard approved, never to a fresh lookup of the name
    # (which could answer differently: DNS rebinding); TLS still checks the name.
    try:
        sock = socket.create_connection((address, port), timeout)
    except OSError as exc:
        raise Unreachable(f"cannot connect to {address} port {port}: "
                          f"{exc.strerror or exc}") from None
    watch.add(sock)
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock, server_hostname=server_name)
    except BaseException:
        sock.close()
        raise


class PinnedIMAP(imaplib.IMAP4):
    """Connected to `address`; `host` is only the name TLS checks (implicit TLS or later)."""

    def __init__(self, host: str, port: int, *, address: str, tls: ssl.SSLContext | None,
                 timeout: float, watch: SocketWatch) -> None:
        self._address, self._implicit_tls, self._watch = address, tls, watch
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return _open_socket(self._address, self.port, server_name=self.host,
                            tls=self._implicit_tls, timeout=timeout, watch=self._watch)


class PinnedPOP3(poplib.POP3):
    """Connected to `address`; `host` is only the name TLS checks (implicit TLS or later)."""

    def __init__(self, host: str, port: int, *, address: str, tls: ssl.SSLContext | None,
                 timeout: float, watch: SocketWatch) -> None:
        self._address, self._implicit_tls, self._watch = address, tls, watch
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return _open_socket(self._address, self.port, server_name=self.host,
                            tls=self._implicit_tls, timeout=timeout, watch=self._watch)
