"""The ledger: accounts, ledger entries, packs and their images.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("balance", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entry_key", sa.String(200), nullable=False, unique=True),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("accounts.user_id"), nullable=False, index=True),
        sa.Column("pack_id", sa.String(36), index=True),
        sa.Column("image_id", sa.String(64)),
        sa.Column("amount", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "packs",
        sa.Column("pack_id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False, index=True),
        sa.Column("cost", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "pack_images",
        sa.Column("pack_id", sa.String(36), sa.ForeignKey("packs.pack_id"), primary_key=True),
        sa.Column("image_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("cost", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("charged", sa.Boolean, nullable=False),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("url", sa.String(500)),
        sa.Column("error", sa.String(1000)),
    )


def downgrade() -> None:
    for table in ("pack_images", "packs", "ledger_entries", "accounts"):
        op.drop_table(table)
