"""the size of each job's stored upload, for the tenant's storage quota

Revision ID: 8b2e4d1c7a90
Revises: 3f1c9a7e2b64
Create Date: 2026-12-02 00:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "8b2e4d1c7a90"
down_revision = "3f1c9a7e2b64"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stored_media_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("stored_media_bytes")
