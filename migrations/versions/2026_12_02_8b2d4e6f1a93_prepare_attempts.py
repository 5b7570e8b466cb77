"""the prepare's attempts and heartbeat on jobs (the preparing status is a new value of jobs.status)

Revision ID: 8b2d4e6f1a93
Revises: c4a9e7f03d21
Create Date: 2026-12-02 00:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "8b2d4e6f1a93"
down_revision = "c4a9e7f03d21"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prepare_attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # A job caught preparing goes back to queued: the old code knows no preparing, and its reaper re-sends queued jobs.
    op.execute("UPDATE jobs SET status = 'queued' WHERE status = 'preparing'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("prepare_attempts")
