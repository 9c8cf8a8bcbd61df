"""mailapi.settings on a real WAL file: defaults, validated audited saves, the per-process cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy import exc as sa_exc

from mailapi.db import open_engine, read_transaction, write_transaction
from mailapi.models import audit_log
from mailapi.models import settings as settings_table
from mailapi.settings import (
    SECRET_KEYS,
    Settings,
    SettingsCache,
    SettingsError,
    load_settings,
    masked,
    save_settings,
)
from mailapi.settings.store import MASK
from tests.support.database import configure

SECRET = "s3cr3t-Value-Nobody-Should-See"


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def current(engine: Engine) -> Settings:
    with read_transaction(engine) as connection:
        return load_settings(connection)


def stored_rows(engine: Engine) -> dict[str, tuple[str, str]]:
    with read_transaction(engine) as connection:
        rows = connection.execute(select(settings_table.c.key, settings_table.c.value,
                                         settings_table.c.updated_by))
        return {key: (value, updated_by) for key, value, updated_by in rows}


def audit_rows(engine: Engine) -> list[dict[str, Any]]:
    with read_transaction(engine) as connection:
        rows = connection.execute(select(audit_log).order_by(audit_log.c.id))
        return [dict(row._mapping) for row in rows]


def save(engine: Engine, **changes: Any) -> Settings:
    return save_settings(engine, changes, actor="alice", source="panel", clock=lambda: 1234.5)


def test_an_empty_database_yields_every_default(engine: Engine) -> None:
    snapshot = current(engine)
    assert snapshot == Settings(revision=snapshot.revision)
    assert snapshot.revision == 1
    assert snapshot.webhook_signature_required is True
    assert snapshot.webhook_secret == "" and snapshot.allowed_sender_domain == ""
    assert (snapshot.smtp_port, snapshot.smtp_security) == (587, "starttls")
    assert snapshot.webhook_timestamp_skew_seconds == 300
    assert stored_rows(engine) == {}


def test_a_change_is_stored_typed_and_bumps_the_revision(engine: Engine) -> None:
    snapshot = save(engine, allowed_sender_domain="Example.ORG.", smtp_port=465,
                    ip_allowlist=[" 10.0.0.0/8 ", ""], allow_any_local_part=True)
    assert snapshot.revision == 2
    assert snapshot.allowed_sender_domain == "example.org"  # normalised on save
    assert snapshot.ip_allowlist == ["10.0.0.0/8"]
    assert (snapshot.smtp_port, snapshot.allow_any_local_part) == (465, True)
    assert current(engine) == snapshot
    assert stored_rows(engine)["smtp_port"] == ("465", "alice")


def test_saving_unchanged_values_keeps_the_revision_and_writes_no_audit(engine: Engine
                                                                        ) -> None:
    save(engine, smtp_host="smtp.example.org")
    entries = len(audit_rows(engine))
    again = save(engine, smtp_host="smtp.example.org", smtp_port=587)  # 587 is the default
    assert again.revision == 2
    assert len(audit_rows(engine)) == entries
    assert "smtp_port" not in stored_rows(engine)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"smtp_port": 70000}, "smtp_port"),
        ({"smtp_port": "25"}, "smtp_port"),
        ({"webhook_signature_required": 1}, "webhook_signature_required"),
        ({"smtp_security": "tls"}, "smtp_security"),
        ({"allowed_sender_domain": "not a domain"}, "allowed_sender_domain"),
        ({"ip_allowlist": ["10.0.0.0/8", "nonsense"]}, "ip_allowlist"),
        ({"public_web_url": "javascript:alert(1)"}, "public_web_url"),
        ({"sender_display_name": "Evil\r\nBcc: x@y"}, "sender_display_name"),
        ({"no_such_setting": 1}, "no_such_setting"),
        ({"retry_base_seconds": 600, "retry_max_seconds": 60}, "retry_max_seconds"),
    ],
)
def test_an_invalid_value_is_refused_naming_the_key_and_nothing_is_stored(
        engine: Engine, changes: dict[str, Any], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        save(engine, smtp_host="smtp.example.org", **changes)
    assert current(engine).revision == 1
    assert stored_rows(engine) == {}
    assert audit_rows(engine) == []


def test_every_change_is_audited_with_actor_source_and_time(engine: Engine) -> None:
    save(engine, smtp_host="smtp.example.org", rate_limit_per_minute=60)
    save_settings(engine, {"rate_limit_per_minute": 30}, actor="cli:root", source="cli",
                  clock=lambda: 2000.0)
    rows = [(r["actor"], r["source"], r["action"], r["target"], r["detail"], r["at"])
            for r in audit_rows(engine)]
    assert sorted(rows[:2]) == [
        ("alice", "panel", "setting.changed", "rate_limit_per_minute", "= 60", 1234.5),
        ("alice", "panel", "setting.changed", "smtp_host", '= "smtp.example.org"', 1234.5),
    ]
    assert rows[2] == ("cli:root", "cli", "setting.changed", "rate_limit_per_minute", "= 30",
                       2000.0)


def test_secret_values_never_reach_the_audit_log(engine: Engine) -> None:
    save(engine, webhook_secret=SECRET, webhook_secret_previous=SECRET + "-old",
         smtp_password=SECRET + "-smtp", smtp_username="mailer")
    entries = audit_rows(engine)
    assert {entry["target"] for entry in entries} == {
        "webhook_secret", "webhook_secret_previous", "smtp_password", "smtp_username"}
    for entry in entries:
        assert SECRET not in str(entry)
        if entry["target"] in SECRET_KEYS:
            assert entry["detail"] == "(secret changed)"
    assert current(engine).webhook_secret == SECRET  # stored for use, only not audited


def test_the_audit_log_is_append_only(engine: Engine) -> None:
    save(engine, smtp_host="smtp.example.org")
    for statement in (audit_log.update().values(actor="mallory"), audit_log.delete()):
        with pytest.raises(sa_exc.IntegrityError, match="append-only"), \
                write_transaction(engine) as connection:
            connection.execute(statement)
    [entry] = audit_rows(engine)
    assert entry["actor"] == "alice"


@pytest.mark.parametrize(
    ("key", "template"),
    [
        ("template_email_verification_text", "Hello {{ undefined_name }}"),
        ("template_password_reset_html", "<p>{% if link %}unclosed</p>"),
        ("template_password_reset_subject", "{{ subject | no_such_filter }}"),
        ("template_email_verification_subject", "{{ ''.__class__.__mro__ }}"),
    ],
)
def test_a_template_that_cannot_render_is_refused_and_nothing_stored(
        engine: Engine, key: str, template: str) -> None:
    with pytest.raises(SettingsError, match=key):
        save(engine, **{key: template, "smtp_host": "smtp.example.org"})
    assert current(engine).revision == 1
    assert stored_rows(engine) == {}
    assert audit_rows(engine) == []


def test_an_include_option_that_breaks_a_template_is_refused(engine: Engine) -> None:
    save(engine, template_email_verification_text="Code: {{ token }}")
    with pytest.raises(SettingsError, match="template_email_verification_text"):
        save(engine, template_include_token=False)
    assert current(engine).template_include_token is True


def test_a_valid_template_is_stored(engine: Engine) -> None:
    snapshot = save(engine, template_password_reset_subject="Reset for {{ to }}")
    assert snapshot.template_password_reset_subject == "Reset for {{ to }}"
    assert current(engine).revision == 2


def test_masked_hides_set_secrets_and_shows_everything_else(engine: Engine) -> None:
    snapshot = save(engine, webhook_secret=SECRET, smtp_username="mailer",
                    smtp_host="smtp.example.org")
    values = masked(snapshot)
    assert values["webhook_secret"] == MASK
    assert values["webhook_secret_previous"] == "" and values["smtp_password"] == ""
    assert SECRET not in repr(values)
    assert (values["smtp_username"], values["smtp_host"]) == ("mailer", "smtp.example.org")
    assert set(values) == {f.name for f in dataclasses.fields(Settings)}


def test_the_cache_sees_another_engines_change_after_its_interval(engine: Engine,
                                                                  db_path: Path) -> None:
    clock = FakeMonotonic()
    cache = SettingsCache(engine, check_interval=5.0, monotonic=clock)
    assert cache.get().smtp_host == ""
    other = open_engine(db_path, durability="NORMAL", busy_timeout_ms=1000)
    try:
        save_settings(other, {"smtp_host": "smtp.example.org"}, actor="panel", source="panel")
    finally:
        other.dispose()
    clock.now += 4.9
    assert cache.get().smtp_host == ""  # still inside the interval: no database read
    clock.now += 0.1
    fresh = cache.get()
    assert (fresh.smtp_host, fresh.revision) == ("smtp.example.org", 2)
    assert cache.get() is fresh  # unchanged revision: the same snapshot object


def test_invalidate_forces_a_reread(engine: Engine) -> None:
    clock = FakeMonotonic()
    cache = SettingsCache(engine, check_interval=3600.0, monotonic=clock)
    assert cache.get().rate_limit_per_minute == 1200
    save(engine, rate_limit_per_minute=10)
    assert cache.get().rate_limit_per_minute == 1200
    cache.invalidate()
    assert cache.get().rate_limit_per_minute == 10


def test_the_audit_row_count_matches_changes(engine: Engine) -> None:
    save(engine, smtp_host="a.example.org", smtp_timeout=10)
    save(engine, smtp_host="b.example.org", smtp_timeout=10)
    with read_transaction(engine) as connection:
        count = connection.execute(select(func.count()).select_from(audit_log)).scalar_one()
    assert count == 3
    assert current(engine).revision == 3


def test_cache_overrides_win_over_the_database(engine: Engine) -> None:
    configure(engine, smtp_password="from-the-database", smtp_host="smtp.example.org")
    cache = SettingsCache(engine, check_interval=0, overrides={"smtp_password": "from-a-file"})
    assert cache.get().smtp_password == "from-a-file"
    configure(engine, smtp_host="other.example.org")  # a later revision keeps the override
    assert (cache.get().smtp_host, cache.get().smtp_password) == ("other.example.org",
                                                                  "from-a-file")
