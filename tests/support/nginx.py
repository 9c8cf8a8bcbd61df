"""Debian's nginx on 127.0.0.1 with the shipped site file, in a throwaway prefix."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NGINX = Path("/usr/sbin/nginx")
SHIPPED_SITE = Path(__file__).resolve().parents[2] / "etc" / "nginx" / "mail-api.conf"

MAIN_CONFIG = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{
    worker_connections 64;
}}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include {prefix}/mail-api.conf;
}}
"""


def site_for_test(*, port: int, certificate: Path, key: Path, panel_port: int,
                  receiver_port: int) -> str:
    """The shipped site file with its port, certificate paths and upstreams replaced.

    Plain text replacement of exact directives, each of which must occur once, so every
    other line of the file is what operators get.
    """
    text = SHIPPED_SITE.read_text(encoding="utf-8")
    replacements = {
        "listen 2500 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "ssl_certificate /etc/mail_api/tls/panel.crt;": f"ssl_certificate {certificate};",
        "ssl_certificate_key /etc/mail_api/tls/panel.key;": f"ssl_certificate_key {key};",
        "server 127.0.0.1:2580;": f"server 127.0.0.1:{panel_port};",
        "server 127.0.0.1:2555;": f"server 127.0.0.1:{receiver_port};",
    }
    for old, new in replacements.items():
        count = text.count(old)
        assert count == 1, f"{SHIPPED_SITE} has {old!r} {count} times, expected once"
        text = text.replace(old, new)
    return text


@dataclass
class Nginx:
    """One nginx master (and its worker) started with `daemon off`, stopped by its PID."""

    prefix: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, site: str, port: int) -> Nginx:
        # The worker runs as nobody when the tests run as root: its temp folders must be
        # reachable, which the 0700 pytest base folder is not.
        prefix = Path(tempfile.mkdtemp(prefix="mail-api-nginx-"))
        prefix.chmod(0o755)
        (prefix / "temp").mkdir()
        (prefix / "mail-api.conf").write_text(site, encoding="utf-8")
        (prefix / "nginx.conf").write_text(MAIN_CONFIG.format(prefix=prefix),
                                           encoding="utf-8")
        return cls(prefix, port)

    def command(self, *extra: str) -> list[str]:
        return [str(NGINX), "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
                "-e", str(self.prefix / "error.log"), *extra]

    def start(self, timeout: float = 15.0) -> Nginx:
        test = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30,
                              check=False)
        assert test.returncode == 0, f"nginx -t refused the configuration:\n{test.stderr}"
        with open(self.prefix / "stderr.log", "wb") as output:
            self.process = subprocess.Popen(self.command("-g", "daemon off;"),
                                            stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"nginx exited at start:\n{self.errors()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"nginx did not listen on {self.port}:\n{self.errors()}")

    def errors(self) -> str:
        paths = (self.prefix / "stderr.log", self.prefix / "error.log")
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    def stop(self) -> None:
        """TERM to the master (it stops its worker), KILL if it lingers; then the prefix."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.prefix, ignore_errors=True)
