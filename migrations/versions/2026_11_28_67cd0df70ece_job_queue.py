"""job queue

Revision ID: 67cd0df70ece
Revises: 5d47838de88f
Create Date: 2026-11-28 03:48:44.548981
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "67cd0df70ece"
down_revision = "5d47838de88f"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue", sa.String(length=64), server_default="cpu", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("queue")
