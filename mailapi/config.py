"""The bootstrap configuration: a TOML file named by --config, read once at start."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mailapi.faults import POINTS as FAULT_POINTS
from mailapi.faults import FaultInjector

RECEIVER_PORT = 2555
PANEL_PORT = 2580
DELIVERY_LOG_MAX_BYTES = 5 * 1024 * 1024
DELIVERY_BACKENDS = ("smtp", "file")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """The bootstrap file is missing, unreadable or holds a value we cannot use."""


@dataclass(frozen=True)
class DatabaseConfig:
    path: Path
    busy_timeout_ms: int = 5000


@dataclass(frozen=True)
class ReceiverConfig:
    host: str = "0.0.0.0"  # noqa: S104 - the spec binds the receiver on all addresses
    port: int = RECEIVER_PORT
    max_body_bytes: int = 64 * 1024


def _default_allowed_hosts() -> list[str]:
    return ["localhost", "127.0.0.1", "[::1]"]


@dataclass(frozen=True)
class PanelConfig:
    host: str = "127.0.0.1"
    port: int = PANEL_PORT
    allow_public_bind: bool = False
    # Host header values the panel answers (DNS-rebinding defence); add the name nginx
    # serves it under. Ports are ignored when comparing.
    allowed_hosts: list[str] = field(default_factory=_default_allowed_hosts)
    # The path prefix the panel is published under (nginx location), "" for the root.
    root_path: str = ""
    # Serve the admin JSON API to unauthenticated callers whose address is loopback
    # (the spec's "local-only admin API"). Off by default: API keys are the normal way.
    loopback_api_without_auth: bool = False
    # Extra ports the SMTP / IMAP / POP3 test buttons may reach beyond the usual ones.
    extra_test_ports: list[int] = field(default_factory=list)
    # Optional in-process TLS (a reverse proxy is the recommended way).
    tls_certificate: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True)
class WorkerConfig:
    delivery_backend: str = "smtp"
    outbox_dir: Path | None = None
    sessions: int = 4
    batch_size: int = 64
    lease_seconds: int = 300
    poll_interval_ms: int = 10


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"
    delivery_log: Path | None = None
    delivery_log_max_bytes: int = DELIVERY_LOG_MAX_BYTES


@dataclass(frozen=True)
class SmtpConfig:
    """Bootstrap-level SMTP options (the rest are runtime settings in the database)."""

    # A PEM bundle of extra CAs to trust for the upstream (a private CA), on top of the
    # system's roots.
    ca_file: Path | None = None


@dataclass(frozen=True)
class SecretsConfig:
    """Secrets kept out of the database and the environment, read from files at start.

    A path may be written `credential:NAME`: the file NAME in the directory systemd's
    `LoadCredential=` provides ($CREDENTIALS_DIRECTORY). A secret given here overrides the
    database setting of the same name in the processes that use it.
    """

    webhook_secret_file: Path | None = None
    smtp_password_file: Path | None = None


@dataclass(frozen=True)
class TestingConfig:
    """TEST ONLY. Never set in production: the process kills itself at the named point."""

    crash_at: str = ""
    crash_after: int = 1


@dataclass(frozen=True)
class Config:
    path: Path
    database: DatabaseConfig
    receiver: ReceiverConfig = field(default_factory=ReceiverConfig)
    panel: PanelConfig = field(default_factory=PanelConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    testing: TestingConfig = field(default_factory=TestingConfig)


def load_config(path: str | Path) -> Config:
    """Read and validate the bootstrap file; relative paths resolve against its folder."""
    config_path = Path(path).expanduser().resolve()
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {config_path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {config_path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: invalid TOML: {exc}") from exc
    return parse_config(raw, config_path)


def parse_config(raw: dict[str, Any], config_path: Path) -> Config:
    known = {"database", "receiver", "panel", "worker", "logging", "smtp", "secrets",
             "testing"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{config_path}: unknown section(s): {', '.join(sorted(unknown))}")
    base = config_path.parent
    database_raw = _section(raw, "database", config_path)
    if "path" not in database_raw:
        raise ConfigError(f"{config_path}: [database] path is required")
    database = _build(DatabaseConfig, database_raw, "database", config_path, base)
    receiver = _build(ReceiverConfig, _section(raw, "receiver", config_path), "receiver",
                      config_path, base)
    panel = _build(PanelConfig, _section(raw, "panel", config_path), "panel", config_path, base)
    worker = _build(WorkerConfig, _section(raw, "worker", config_path), "worker", config_path,
                    base)
    logging = _build(LoggingConfig, _section(raw, "logging", config_path), "logging",
                     config_path, base)
    smtp = _build(SmtpConfig, _section(raw, "smtp", config_path), "smtp", config_path, base)
    secrets = _build(SecretsConfig, _section(raw, "secrets", config_path), "secrets",
                     config_path, base)
    testing = _build(TestingConfig, _section(raw, "testing", config_path), "testing",
                     config_path, base)
    config = Config(config_path, database, receiver, panel, worker, logging, smtp, secrets,
                    testing)
    _validate(config)
    return config


def _section(raw: dict[str, Any], name: str, config_path: Path) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{config_path}: [{name}] must be a table")
    return value


def _build(cls: Any, values: dict[str, Any], section: str, config_path: Path, base: Path) -> Any:
    types = {f.name: f.type for f in fields(cls)}
    unknown = set(values) - set(types)
    if unknown:
        raise ConfigError(
            f"{config_path}: unknown key(s) in [{section}]: {', '.join(sorted(unknown))}"
        )
    converted: dict[str, Any] = {}
    for key, value in values.items():
        expected = str(types[key])
        where = f"{config_path}: [{section}] {key}"
        if "Path" in expected:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where} must be a non-empty path string")
            if value.startswith("credential:"):
                _check_credential_name(value.removeprefix("credential:"), where)
                # Resolved when the secret is read: only the processes that read it need
                # systemd's $CREDENTIALS_DIRECTORY (a CLI command that does not is unaffected).
                converted[key] = Path(value)
            else:
                converted[key] = (base / Path(value).expanduser()).resolve()
        elif expected == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false")
            converted[key] = value
        elif expected == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where} must be an integer")
            converted[key] = value
        elif expected == "str":
            if not isinstance(value, str):
                raise ConfigError(f"{where} must be a string")
            converted[key] = value
        elif expected == "list[str]":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where} must be a list of strings")
            converted[key] = list(value)
        elif expected == "list[int]":
            if not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{where} must be a list of integers")
            converted[key] = list(value)
        else:  # pragma: no cover - a new field type without a converter
            raise ConfigError(f"{where}: unsupported type {expected}")
    return cls(**converted)


def _check_credential_name(name: str, where: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"{where}: credential:NAME needs a plain credential name")


def secret_path(path: Path, setting: str) -> Path:
    """Where a secret file is: `credential:NAME` is NAME in the directory systemd's
    LoadCredential= provides to this process ($CREDENTIALS_DIRECTORY)."""
    text = str(path)
    if not text.startswith("credential:"):
        return path
    name = text.removeprefix("credential:")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(f"[secrets] {setting}_file names credential {name!r}, but "
                          "$CREDENTIALS_DIRECTORY is not set: run under systemd with "
                          "LoadCredential=, or give a path")
    return Path(directory) / name


def read_secret_file(path: Path, setting: str) -> str:
    """The secret in `path` (one trailing newline stripped); ConfigError if unusable."""
    path = secret_path(path, setting)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the {setting} file {path}: {exc}") from exc
    secret = text[:-1] if text.endswith("\n") else text
    if not secret or "\n" in secret or "\r" in secret:
        raise ConfigError(f"the {setting} file {path} must hold one non-empty line")
    return secret


def secret_overrides(config: Config, settings: tuple[str, ...]) -> dict[str, str]:
    """The file-provided values of `settings` (names like "smtp_password") that are set."""
    overrides = {}
    for setting in settings:
        path = getattr(config.secrets, f"{setting}_file")
        if path is not None:
            overrides[setting] = read_secret_file(path, setting)
    return overrides


def _validate(config: Config) -> None:
    where = str(config.path)
    for section, port in (("receiver", config.receiver.port), ("panel", config.panel.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{where}: [{section}] port must be between 0 and 65535")
    if config.panel.host not in ("127.0.0.1", "::1", "localhost") and (
        not config.panel.allow_public_bind
    ):
        raise ConfigError(
            f"{where}: [panel] host {config.panel.host!r} is not loopback; "
            "set [panel] allow_public_bind = true to bind it publicly"
        )
    if config.testing.crash_at and config.testing.crash_at not in FAULT_POINTS:
        raise ConfigError(f"{where}: [testing] crash_at must be one of "
                          f"{', '.join(FAULT_POINTS)}")
    panel = config.panel
    if panel.root_path and (not panel.root_path.startswith("/") or panel.root_path.endswith("/")):
        raise ConfigError(f"{where}: [panel] root_path must start with / and not end with / "
                          "(for example \"/mail-api\"), or be empty")
    if not panel.allowed_hosts:
        raise ConfigError(f"{where}: [panel] allowed_hosts must name at least one host")
    if any(not 1 <= port <= 65535 for port in panel.extra_test_ports):
        raise ConfigError(f"{where}: [panel] extra_test_ports must be between 1 and 65535")
    if (panel.tls_certificate is None) != (panel.tls_key is None):
        raise ConfigError(f"{where}: [panel] tls_certificate and tls_key go together")
    worker = config.worker
    if worker.delivery_backend not in DELIVERY_BACKENDS:
        raise ConfigError(f"{where}: [worker] delivery_backend must be one of "
                          f"{', '.join(DELIVERY_BACKENDS)}")
    if worker.delivery_backend == "file" and worker.outbox_dir is None:
        raise ConfigError(f"{where}: [worker] outbox_dir is required with the file backend")
    for name in ("sessions", "batch_size", "lease_seconds", "poll_interval_ms"):
        if getattr(worker, name) < 1:
            raise ConfigError(f"{where}: [worker] {name} must be at least 1")
    if config.logging.level not in LOG_LEVELS:
        raise ConfigError(f"{where}: [logging] level must be one of {', '.join(LOG_LEVELS)}")
    if config.logging.format not in LOG_FORMATS:
        raise ConfigError(f"{where}: [logging] format must be one of {', '.join(LOG_FORMATS)}")
    if config.logging.delivery_log_max_bytes < 64 * 1024:
        raise ConfigError(f"{where}: [logging] delivery_log_max_bytes must be at least 65536")
    if config.receiver.max_body_bytes < 1024:
        raise ConfigError(f"{where}: [receiver] max_body_bytes must be at least 1024")
    if config.database.busy_timeout_ms < 0:
        raise ConfigError(f"{where}: [database] busy_timeout_ms must not be negative")


def fault_injector(config: Config) -> FaultInjector | None:
    """The test-only fault injector the config arms, or None (production)."""
    if not config.testing.crash_at:
        return None
    return FaultInjector(config.testing.crash_at, config.testing.crash_after)
