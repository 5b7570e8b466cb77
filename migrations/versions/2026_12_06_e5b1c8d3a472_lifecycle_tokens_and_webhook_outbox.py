"""claim tokens on prepares and segments, and the outbox of owed webhook events

Revision ID: e5b1c8d3a472
Revises: d2f8b6a41c57
Create Date: 2026-12-06 00:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "e5b1c8d3a472"
down_revision = "d2f8b6a41c57"
branch_labels = None
depends_on = None


# Columns are added and dropped in place, never with batch_alter_table: on SQLite that copies the table and drops
# the old one, and the drop would cascade to every job's frames, segments and tracks.
def upgrade() -> None:
    op.add_column("jobs", sa.Column("prepare_token", sa.String(64), nullable=True))
    op.add_column("segments", sa.Column("claim_token", sa.String(64), nullable=True))
    op.create_table(
        "webhook_events",
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_webhook_events_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("job_id", name=op.f("uq_webhook_events_job_id")),
    )
    op.create_index("ix_webhook_events_outcome_due", "webhook_events", ["outcome", "due_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_outcome_due", table_name="webhook_events")
    op.drop_table("webhook_events")
    op.execute("ALTER TABLE segments DROP COLUMN claim_token")
    op.execute("ALTER TABLE jobs DROP COLUMN prepare_token")
