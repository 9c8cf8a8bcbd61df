"""Alembic migrations: the only way MAIL_API's schema changes (run by `mailapi db upgrade`)."""
