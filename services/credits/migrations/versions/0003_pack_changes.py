"""Remember every regeneration by its command id, so a redelivered command is answered as
it was decided instead of being applied again.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "pack_changes",
        sa.Column("command_id", sa.String(64), primary_key=True),
        sa.Column("pack_id", sa.String(36), nullable=False, index=True),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pack_changes")
