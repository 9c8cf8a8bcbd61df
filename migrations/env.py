"""Alembic environment: migrates the connection handed in by mailapi.schema."""

from __future__ import annotations

from alembic import context

from mailapi.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `mailapi db upgrade`, which supplies the database")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite needs table rebuilds for most ALTERs
)
with context.begin_transaction():
    context.run_migrations()
