"""Control panel: admins, sessions, the session-signing secret, API keys, login throttling.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

import secrets
import time
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "admins",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("password_changed_at", sa.Float, nullable=False),
        sa.Column("last_login_at", sa.Float, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "panel_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("admin_id", sa.Integer, nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_seen_at", sa.Float, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("user_agent", sa.String(255), nullable=False),
        sa.Column("flash", sa.Text, nullable=True),
    )
    op.create_index("ix_panel_sessions_admin", "panel_sessions", ["admin_id"])
    op.create_table(
        "panel_secret",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_secret", sa.String(128), nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("rotated_at", sa.Float, nullable=False),
    )
    op.execute(sa.text(
        "INSERT INTO panel_secret (id, session_secret, generation, rotated_at) "
        "VALUES (1, :secret, 1, :now)").bindparams(secret=secrets.token_urlsafe(48),
                                                   now=time.time()))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("last_used_at", sa.Float, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("first_at", sa.Float, nullable=False),
        sa.Column("locked_until", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("login_failures", "api_keys", "panel_secret", "panel_sessions", "admins"):
        op.drop_table(table)
