"""the audit log: deletes, expiries and key use

Revision ID: c4a9e7f03d21
Revises: 8b2e4d1c7a90
Create Date: 2026-12-02 00:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c4a9e7f03d21"
down_revision = "8b2e4d1c7a90"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=True),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("key_id", sa.String(length=16), nullable=True),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_tenant_at", "audit_events", ["tenant", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_events_tenant_at", table_name="audit_events")
    op.drop_table("audit_events")
