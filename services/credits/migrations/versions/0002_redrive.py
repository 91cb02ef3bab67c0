"""Remember each accepted pack's pack.accepted and its last activity, so a pack whose
work went missing can be driven again.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("packs") as batch:
        batch.add_column(sa.Column("accepted_event", sa.Text, nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("packs") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("accepted_event")
