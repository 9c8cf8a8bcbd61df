"""A real Postfix (submission, submissions) on 127.0.0.1 delivering into the test Dovecot."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.support.dovecot import Dovecot
from tests.support.ports import free_port

POSTFIX = Path("/usr/sbin/postfix")
POSTCONF = Path("/usr/sbin/postconf")
DOVECOT_LDA = Path("/usr/lib/dovecot/dovecot-lda")
HOST = "127.0.0.1"
DOMAIN = "example.net"  # alice@example.net is Dovecot's alice (the receiver refuses .test)
MAIL_OWNER = "mail"  # dovecot-lda runs as the owner of the maildir (tests/support/dovecot.py)

MAIN_CF = """\
# Written by tests/support/postfix.py for one test session; nothing here is for production.
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.{domain}
mydomain = {domain}
myorigin = $mydomain
mydestination =
inet_interfaces = {host}
inet_protocols = ipv4
# Never consulted: the restrictions in master.cf name permit_sasl_authenticated alone, so
# being on loopback earns nothing; only an authenticated submission may send.
mynetworks = 127.0.0.1/32
alias_maps =
alias_database =
local_recipient_maps =
biff = no
# No DNS anywhere: no MX lookups, no reverse lookup of the client.
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
# Syslog is not running here: Postfix's own postlogd writes this file.
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
# Local delivery of the test domain: Dovecot's own delivery agent (dovecot-lda, run by
# pipe(8) as `mail`) stores alice's mail in the INBOX that Dovecot serves over IMAP/POP3.
virtual_mailbox_domains = {domain}
virtual_mailbox_maps = inline:{{ {user}@{domain}={user}/ }}
virtual_transport = dovecot
dovecot_destination_recipient_limit = 1
smtpd_banner = $myhostname ESMTP MAIL_API test Postfix
smtpd_tls_chain_files = {root}/tls/server.key, {root}/tls/server.pem
smtpd_tls_mandatory_protocols = >=TLSv1.2
smtpd_tls_protocols = >=TLSv1.2
smtpd_tls_loglevel = 1
# The Received header names the TLS version and cipher: evidence the hop was encrypted.
smtpd_tls_received_header = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {sasl_socket}
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
"""

# Both listeners are submission services: TLS first, AUTH only over TLS, and nothing is
# accepted (not even mail for the local domain) from a client that has not authenticated.
SUBMISSION_OPTIONS = """\
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_recipient_restrictions=permit_sasl_authenticated,reject
"""

MASTER_CF = """\
# Written by tests/support/postfix.py. service type private unpriv chroot wakeup maxproc command
{host}:{submission_port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
{submission_options}{host}:{submissions_port} inet n - n - - smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
{submission_options}cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
dovecot unix - n n - - pipe
  flags=DRhu user={mail_owner}:{mail_owner}
  argv={lda} -c {dovecot_config} -f ${{sender}} -a ${{original_recipient}} -d ${{user}}
"""


@dataclass(frozen=True)
class Postfix:
    """Where the test Postfix listens, the mailbox it delivers to, and its log."""

    host: str
    submission_port: int  # STARTTLS required, then AUTH
    submissions_port: int  # implicit TLS (465 style), then AUTH
    domain: str
    mailbox: str  # the one local address, delivered into Dovecot's user
    config_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _daemon_directory() -> Path:
    result = subprocess.run([str(POSTCONF), "-d", "-h", "daemon_directory"], capture_output=True,
                            text=True, timeout=30, check=True)
    return Path(result.stdout.strip())


def _write_tree(root: Path, ca: trustme.CA, dovecot: Dovecot, ports: dict[str, int]) -> Path:
    config_dir, tls = root / "etc", root / "tls"
    for folder in (config_dir, tls, root / "queue", root / "data"):
        folder.mkdir(parents=True)
    certificate = ca.issue_cert("localhost", HOST)
    (tls / "server.pem").write_bytes(b"".join(blob.bytes()
                                              for blob in certificate.cert_chain_pems))
    certificate.private_key_pem.write_to_path(str(tls / "server.key"))
    (tls / "server.key").chmod(0o600)
    # Postfix checks that the data directory belongs to mail_owner; the rest stays root's.
    shutil.chown(root / "data", "postfix", "postfix")
    values = {"root": root, "host": HOST, "domain": DOMAIN, "user": dovecot.user,
              "sasl_socket": dovecot.sasl_socket, "mail_owner": MAIL_OWNER,
              "lda": DOVECOT_LDA, "dovecot_config": dovecot.config_path,
              "submission_options": SUBMISSION_OPTIONS, **ports}
    (config_dir / "main.cf").write_text(MAIN_CF.format(**values), encoding="utf-8")
    (config_dir / "master.cf").write_text(MASTER_CF.format(**values), encoding="utf-8")
    return config_dir


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n"
                             f"{result.stdout}{result.stderr}")


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _group_members(group: int) -> list[int]:
    """Live PIDs in the process group `group` (the master's: it leads its own session).

    Zombies do not count: once the master is gone its children are reaped by PID 1, which
    in a container may take its time; they hold nothing.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        state, _parent, process_group = stat.rsplit(")", 1)[1].split()[:3]
        if int(process_group) == group and state != "Z":
            members.append(int(entry.name))
    return members


def _stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM to the master by PID; it passes SIGTERM to its process group and exits.

    The group's other members (smtpd, qmgr, pipe, ...) may outlive the master for a moment;
    wait for them too, and SIGKILL the group (the master's own PID) if any hangs on.
    """
    group = process.pid
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    while _group_members(group) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _group_members(group)
    if left:
        os.killpg(group, signal.SIGKILL)
        raise AssertionError(f"Postfix processes {left} outlived the master; killed them")


def _diagnostics(root: Path) -> str:
    parts = []
    for name in ("master.log", "postfix.log"):
        path = root / name
        if path.exists():
            parts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
    return "\n".join(parts)


def _wait_listening(process: subprocess.Popen[bytes], ports: list[int], root: Path,
                    timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(ports)
    while waiting and time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the Postfix master exited with {process.returncode}:\n"
                                 f"{_diagnostics(root)}")
        waiting = [port for port in waiting if not _accepting(port)]
        if waiting:
            time.sleep(0.05)
    if waiting:
        raise AssertionError(f"Postfix did not listen on {waiting} within {timeout}s:\n"
                             f"{_diagnostics(root)}")


def start_postfix(root: Path, ca: trustme.CA, dovecot: Dovecot
                  ) -> tuple[Postfix, subprocess.Popen[bytes]]:
    """Write a configuration under `root`, start the master in the foreground, wait for it.

    The default /etc/postfix is neither read nor written: `postfix -c DIR` and the master's
    `-c DIR` take everything from DIR. (alternate_config_directories in the default main.cf
    only governs the set-gid postdrop/postqueue, which the tests never run.)
    """
    if not POSTFIX.exists() or not DOVECOT_LDA.exists():
        raise AssertionError(f"{POSTFIX} or {DOVECOT_LDA} is missing: run `make test`, which "
                             "installs postfix and dovecot (scripts/ensure-apt.sh)")
    if os.geteuid() != 0:
        raise AssertionError("the Postfix fixture must run as root (the master binds as root "
                             "and its daemons switch to the postfix and mail users)")
    if dovecot.sasl_socket is None:
        raise AssertionError("the test Dovecot has no auth socket for Postfix: its `postfix` "
                             "user was missing when Dovecot started (run `make test`)")
    ports = {"submission_port": free_port(), "submissions_port": free_port()}
    config_dir = _write_tree(root, ca, dovecot, ports)
    # `check` runs post-install create-missing: the queue directories with the owners and
    # modes Postfix insists on (postfix, postdrop), under our queue_directory only.
    _run(str(POSTFIX), "-c", str(config_dir), "check")
    with open(root / "master.log", "wb") as output:
        # The master itself rather than `postfix start` (which daemonizes) or `start-fg`
        # (a shell in between unless PID 1): the Popen PID is the master's, and it leads its
        # own session, so its PID names the whole group at teardown.
        process = subprocess.Popen([str(_daemon_directory() / "master"), "-c", str(config_dir)],
                                   stdout=output, stderr=subprocess.STDOUT)
    server = Postfix(host=HOST, domain=DOMAIN, mailbox=f"{dovecot.user}@{DOMAIN}",
                     config_dir=config_dir, log_path=root / "postfix.log", **ports)
    try:
        _wait_listening(process, [server.submission_port, server.submissions_port], root)
    except BaseException:
        _stop(process)
        raise
    return server, process


@pytest.fixture(scope="session", name="postfix")
def postfix_server(ca: trustme.CA, dovecot: Dovecot) -> Iterator[Postfix]:
    """One real Postfix for the whole session, delivering into the session's Dovecot.

    Named `postfix` for the tests; a module imports `postfix_server` to make it available
    (under its own name, the import would be shadowed by the tests' `postfix` arguments).
    """
    root = Path(tempfile.mkdtemp(prefix="mailapi-postfix-"))
    root.chmod(0o755)  # the postfix and mail users walk down to the queue and the logs
    try:
        server, process = start_postfix(root, ca, dovecot)
        yield server
        _stop(process)
    finally:
        shutil.rmtree(root, ignore_errors=True)
