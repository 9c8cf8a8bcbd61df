"""Secrets from files and systemd credentials, overriding the database settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailapi.config import ConfigError, load_config, secret_overrides


def write(tmp_path: Path, secrets: str) -> Path:
    path = tmp_path / "mail-api.toml"
    path.write_text(f'[database]\npath = "db.sqlite3"\n\n[secrets]\n{secrets}\n',
                    encoding="utf-8")
    return path


def test_a_secret_file_overrides_only_the_settings_a_process_asks_for(tmp_path: Path) -> None:
    (tmp_path / "smtp-password").write_text("s3cret pass\n", encoding="utf-8")
    config = load_config(write(tmp_path, 'smtp_password_file = "smtp-password"'))
    assert secret_overrides(config, ("smtp_password",)) == {"smtp_password": "s3cret pass"}
    assert secret_overrides(config, ("webhook_secret",)) == {}


def test_credential_names_resolve_in_the_systemd_credentials_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "webhook-secret").write_text("abc123", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load_config(write(tmp_path, 'webhook_secret_file = "credential:webhook-secret"'))
    assert secret_overrides(config, ("webhook_secret",)) == {"webhook_secret": "abc123"}


def test_a_credential_outside_systemd_is_a_clear_error(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    # Loading is fine (a CLI command that reads no secret works); reading it is not.
    config = load_config(write(tmp_path, 'webhook_secret_file = "credential:webhook-secret"'))
    assert secret_overrides(config, ("smtp_password",)) == {}
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY is not set"):
        secret_overrides(config, ("webhook_secret",))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(ConfigError, match="plain credential name"):
        load_config(write(tmp_path, 'webhook_secret_file = "credential:../etc/shadow"'))


@pytest.mark.parametrize("content", ["", "\n", "two\nlines\n"])
def test_an_unusable_secret_file_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "secret").write_text(content, encoding="utf-8")
    config = load_config(write(tmp_path, 'smtp_password_file = "secret"'))
    with pytest.raises(ConfigError, match="one non-empty line"):
        secret_overrides(config, ("smtp_password",))


def test_a_missing_secret_file_is_refused(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'smtp_password_file = "nowhere"'))
    with pytest.raises(ConfigError, match="cannot read the smtp_password file"):
        secret_overrides(config, ("smtp_password",))
