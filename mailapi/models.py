"""The schema as SQLAlchemy Core tables; migrations/ creates exactly these."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

# Runtime settings: one row per key, the value as JSON text. Absent keys take their default.
settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(128), nullable=False),
)

# A single row whose revision grows on every settings write, so processes can cheaply
# tell whether their cached snapshot is stale.
settings_revision = Table(
    "settings_revision",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("revision", Integer, nullable=False),
)

# The outbound queue. Rows are deleted once the upstream answered 250 to DATA.
outbound_queue = Table(
    "outbound_queue",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("state", String(16), nullable=False),  # queued | leased | failed
    Column("message_type", String(32), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("envelope_sender", String(320), nullable=False),
    Column("subject", Text, nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("message", LargeBinary, nullable=False),  # the composed RFC 5322 bytes
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("reclaims", Integer, nullable=False, default=0),
    Column("lease_token", Integer, nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("failed_reason", String(32), nullable=True),
    Column("updated_at", Float, nullable=False),
    sqlite_autoincrement=True,  # ids are never reused: idempotency keys point at them
)
Index("ix_outbound_queue_due", outbound_queue.c.state, outbound_queue.c.next_attempt_at)
Index("ix_outbound_queue_lease", outbound_queue.c.state, outbound_queue.c.lease_expires_at)

# Idempotency: the payload digest of every accepted webhook and the id it was given,
# kept past the row's deletion so a replay answers the original id and sends nothing.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("queue_id", Integer, nullable=False),
    Column("queued_at", Float, nullable=False),
    Column("keep_until", Float, nullable=False),
)
Index("ix_idempotency_keep_until", idempotency_keys.c.keep_until)

# One row per delivery attempt outcome, for the panel's recent-deliveries views.
delivery_events = Table(
    "delivery_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("queue_id", Integer, nullable=False),
    Column("message_id", String(255), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("outcome", String(16), nullable=False),  # delivered | deferred | failed | paused
    Column("smtp_code", Integer, nullable=True),
    Column("detail", Text, nullable=True),
    Column("at", Float, nullable=False),
)
Index("ix_delivery_events_at", delivery_events.c.at)
Index("ix_delivery_events_queue_id", delivery_events.c.queue_id)

# Counters (the fencing-token sequence) and the worker's circuit-breaker state.
counters = Table(
    "counters",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", Integer, nullable=False),
)

queue_pause = Table(
    "queue_pause",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("paused_until", Float, nullable=True),
    Column("reason", Text, nullable=True),
    Column("failures", Integer, nullable=False, default=0),
    Column("settings_fingerprint", String(64), nullable=True),
    Column("updated_at", Float, nullable=False),
)

# Liveness of each process, written every few seconds, read by the panel and the CLI.
heartbeats = Table(
    "heartbeats",
    metadata,
    Column("process", String(32), primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("beat_at", Float, nullable=False),
    Column("status", Text, nullable=False),
)

# Append-only record of who changed what (the panel adds its own writers in issue 3).
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(255), nullable=False),
    Column("source", String(64), nullable=False),
    Column("detail", Text, nullable=True),
)
Index("ix_audit_log_at", audit_log.c.at)

# Control panel administrators; passwords as argon2id hashes.
admins = Table(
    "admins",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("disabled", Boolean, nullable=False, server_default=false()),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("password_changed_at", Float, nullable=False),
    Column("last_login_at", Float, nullable=True),
    sqlite_autoincrement=True,
)

# Server-side panel sessions. The cookie carries the signed session id; the table holds
# only its SHA-256, so a copy of the database does not hand out live sessions.
panel_sessions = Table(
    "panel_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("admin_id", Integer, nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=False),
    Column("source", String(64), nullable=False),
    Column("user_agent", String(255), nullable=False),
    Column("flash", Text, nullable=True),
)
Index("ix_panel_sessions_admin", panel_sessions.c.admin_id)

# The key that signs session cookies (one row); rotating it logs everyone out.
panel_secret = Table(
    "panel_secret",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("session_secret", String(128), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("rotated_at", Float, nullable=False),
)

# API keys for the admin JSON API: only a SHA-256 of the (high-entropy) key is kept.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("scope", String(16), nullable=False),  # read | admin
    Column("created_at", Float, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
    sqlite_autoincrement=True,
)

# Failed logins per account ("user:NAME") and per address ("ip:ADDR").
login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(160), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("first_at", Float, nullable=False),
    Column("locked_until", Float, nullable=False),
)
