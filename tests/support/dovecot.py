"""A real Dovecot (IMAP, IMAPS, POP3, POP3S) on 127.0.0.1 with a throwaway configuration."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from uuid import uuid4

import pytest
import trustme

from tests.support.ports import free_port

DOVECOT = Path("/usr/sbin/dovecot")
HOST = "127.0.0.1"
# A second loopback address whose listeners get `ssl = no`: the same Dovecot then offers
# neither STARTTLS nor STLS there, for the "TLS required but not offered" tests.
NO_TLS_HOST = "127.0.0.2"
USER = "alice"
PASSWORD = "dovecot-test-password"
# The system user the mailbox belongs to (Debian's `mail`); Dovecot refuses root for mail.
MAIL_OWNER = "mail"
POSTFIX_USER = "postfix"  # Debian's postfix package creates it

CONFIG = """\
# Written by tests/support/dovecot.py for one test session; nothing here is for production.
base_dir = {root}/run
state_dir = {root}/state
instance_name = mailapi-test-{imap_port}
protocols = imap pop3
listen = {host}
log_path = {root}/dovecot.log
# The suite runs as root: Dovecot's own processes still need unprivileged users, which the
# Debian package creates.
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
# Dovecot never touches mail as root: the mailbox belongs to Debian's `mail` user (uid 8).
mail_uid = {mail_user}
mail_gid = {mail_user}
first_valid_uid = {mail_uid}
first_valid_gid = {mail_gid}
mail_location = maildir:{root}/mail/%u
ssl = yes
ssl_cert = <{root}/server.pem
ssl_key = <{root}/server.key
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain login
# A wrong password answers (almost) at once instead of after the default two-second delay,
# and repeated failures from 127.0.0.1 do not grow into an anti-brute-force penalty.
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
  inet_listener imap_no_tls {{
    address = {no_tls_host}
    port = {imap_no_tls_port}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = {pop3s_port}
    ssl = yes
  }}
  inet_listener pop3_no_tls {{
    address = {no_tls_host}
    port = {pop3_no_tls_port}
  }}
}}
local {no_tls_host} {{
  ssl = no
}}
# For tests/support/postfix.py: Postfix's SMTP AUTH asks this socket (smtpd_sasl_type =
# dovecot), and Postfix's pipe(8) runs dovecot-lda as `mail`, which finds alice through the
# default auth-userdb socket, logs to a file of its own (the main log belongs to root) and
# reports to the stats process (whose socket is otherwise for the dovecot group only).
{postfix_auth_listener}
protocol lda {{
  log_path = {root}/lda.log
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""

# Written only where Postfix is installed: the socket belongs to its `postfix` user.
POSTFIX_AUTH_LISTENER = """\
service auth {
  unix_listener auth-postfix {
    mode = 0660
    user = postfix
    group = postfix
  }
}
"""


@dataclass(frozen=True)
class Dovecot:
    """Where the test Dovecot listens, who may log in, and the files behind it."""

    host: str
    imap_port: int  # STARTTLS offered
    imaps_port: int  # implicit TLS
    pop3_port: int  # STLS offered
    pop3s_port: int  # implicit TLS
    no_tls_host: str
    imap_no_tls_port: int  # on no_tls_host: neither STARTTLS nor any TLS
    pop3_no_tls_port: int  # on no_tls_host: no STLS
    user: str
    password: str
    ca_file: Path  # the CA that signed the server certificate
    maildir: Path  # the user's INBOX
    log_path: Path
    config_path: Path  # for dovecot-lda, which Postfix runs to deliver into the INBOX
    lda_log_path: Path
    # Postfix's SMTP AUTH socket (smtpd_sasl_path); None where Postfix is not installed.
    sasl_socket: Path | None

    def port(self, protocol: str) -> int:
        """The listener for `protocol` (imap, imaps, pop3, pop3s)."""
        ports = {"imap": self.imap_port, "imaps": self.imaps_port, "pop3": self.pop3_port,
                 "pop3s": self.pop3s_port}
        return ports[protocol]

    def deliver(self, subject: str) -> Path:
        """Drop a message into the INBOX the way a delivery agent would (maildir new/)."""
        message = EmailMessage()
        message["From"] = "sender@example.com"
        message["To"] = f"{self.user}@example.com"
        message["Subject"] = subject
        message.set_content("A message placed by the test suite.\n")
        name = f"{time.time_ns()}.{uuid4().hex}.test"
        # Maildir's rule: write under tmp/, then rename into new/ so no reader sees half.
        draft = self.maildir / "tmp" / name
        draft.write_bytes(message.as_bytes())
        shutil.chown(draft, MAIL_OWNER, MAIL_OWNER)
        return draft.rename(self.maildir / "new" / name)

    def inbox_count(self) -> int:
        return sum(1 for folder in ("new", "cur") for _ in (self.maildir / folder).iterdir())


def _write_tree(root: Path, ca: trustme.CA, ports: dict[str, int]) -> Path:
    certificate = ca.issue_cert("localhost", HOST, NO_TLS_HOST)
    (root / "server.pem").write_bytes(b"".join(blob.bytes()
                                               for blob in certificate.cert_chain_pems))
    certificate.private_key_pem.write_to_path(str(root / "server.key"))
    (root / "server.key").chmod(0o600)
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    owner = pwd.getpwnam(MAIL_OWNER)
    # The uid and gid let dovecot-lda, running as `mail`, look alice up (auth-userdb allows a
    # client only the users whose uid it runs as); they equal mail_uid/mail_gid anyway.
    (root / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}:{owner.pw_uid}:{owner.pw_gid}::"
                                f"{root}/home/{USER}::\n", encoding="utf-8")
    for folder in ("run", "state", f"home/{USER}", *(f"mail/{USER}/{d}"
                                                      for d in ("new", "cur", "tmp"))):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for top in ("home", "mail"):
        for path in [root / top, *(root / top).rglob("*")]:
            shutil.chown(path, MAIL_OWNER, MAIL_OWNER)
    (root / "lda.log").touch(mode=0o600)
    shutil.chown(root / "lda.log", MAIL_OWNER, MAIL_OWNER)
    config = root / "dovecot.conf"
    listener = POSTFIX_AUTH_LISTENER if _postfix_user_exists() else ""
    config.write_text(CONFIG.format(root=root, host=HOST, no_tls_host=NO_TLS_HOST,
                                    mail_user=MAIL_OWNER, mail_uid=owner.pw_uid,
                                    mail_gid=owner.pw_gid, postfix_auth_listener=listener,
                                    **ports), encoding="utf-8")
    return config


def _postfix_user_exists() -> bool:
    try:
        pwd.getpwnam(POSTFIX_USER)
    except KeyError:
        return False
    return True


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _wait_listening(process: subprocess.Popen[bytes], targets: list[tuple[str, int]],
                    root: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(targets)
    while waiting and time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"dovecot exited with {process.returncode}:\n"
                                 f"{_diagnostics(root)}")
        waiting = [target for target in waiting if not _accepting(*target)]
        if waiting:
            time.sleep(0.05)
    if waiting:
        raise AssertionError(f"dovecot did not listen on {waiting} within {timeout}s:\n"
                             f"{_diagnostics(root)}")


def _diagnostics(root: Path) -> str:
    parts = []
    for name in ("stderr.log", "dovecot.log"):
        path = root / name
        if path.exists():
            parts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
    return "\n".join(parts)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the master (its PID, never a name): it stops its children and exits."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        raise


def start_dovecot(root: Path, ca: trustme.CA) -> tuple[Dovecot, subprocess.Popen[bytes]]:
    """Write a configuration under `root`, start Dovecot in the foreground, wait for it.

    `root` and its parents must be traversable by the `mail` user (pytest's own tmp tree is
    private to root), which is why the fixture uses a directory of its own under /tmp.
    """
    if not DOVECOT.exists():
        raise AssertionError(f"{DOVECOT} is missing: run `make test`, which installs "
                             "dovecot-imapd and dovecot-pop3d (scripts/ensure-apt.sh)")
    if os.geteuid() != 0:
        raise AssertionError("the Dovecot fixture must run as root (Dovecot switches to its "
                             "dovecot, dovenull and mail users)")
    ports = {name: free_port() for name in ("imap_port", "imaps_port", "pop3_port",
                                            "pop3s_port", "imap_no_tls_port",
                                            "pop3_no_tls_port")}
    config = _write_tree(root, ca, ports)
    with open(root / "stderr.log", "wb") as stderr:
        # -F: stay in the foreground, so the Popen PID is the master's and SIGTERM stops it.
        process = subprocess.Popen([str(DOVECOT), "-F", "-c", str(config)],
                                   stdout=stderr, stderr=subprocess.STDOUT)
    server = Dovecot(host=HOST, no_tls_host=NO_TLS_HOST, user=USER, password=PASSWORD,
                     ca_file=root / "ca.pem", maildir=root / "mail" / USER,
                     log_path=root / "dovecot.log", config_path=config,
                     lda_log_path=root / "lda.log",
                     sasl_socket=root / "run" / "auth-postfix" if _postfix_user_exists()
                     else None, **ports)
    targets = [(HOST, server.port(p)) for p in ("imap", "imaps", "pop3", "pop3s")]
    targets += [(NO_TLS_HOST, server.imap_no_tls_port), (NO_TLS_HOST, server.pop3_no_tls_port)]
    try:
        _wait_listening(process, targets, root)
    except BaseException:
        _stop(process)
        raise
    return server, process


@pytest.fixture(scope="session")
def dovecot(ca: trustme.CA) -> Iterator[Dovecot]:
    """One real Dovecot for the whole session (its certificate comes from the `ca` fixture)."""
    root = Path(tempfile.mkdtemp(prefix="mailapi-dovecot-"))
    root.chmod(0o755)
    try:
        server, process = start_dovecot(root, ca)
        yield server
        _stop(process)
    finally:
        shutil.rmtree(root, ignore_errors=True)
