"""Alembic environment: the ledger's URL comes from the caller (Ledger.migrate)."""

from __future__ import annotations

from alembic import context

from services.credits.tables import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through services.credits.ledger.Ledger.migrate()")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
