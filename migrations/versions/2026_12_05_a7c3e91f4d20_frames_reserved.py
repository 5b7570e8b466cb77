"""the frames a job reserves of its tenant's frames per day from submission until it is prepared

Revision ID: a7c3e91f4d20
Revises: 359a45686e74
Create Date: 2026-12-05 00:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "a7c3e91f4d20"
down_revision = "359a45686e74"
branch_labels = None
depends_on = None


# Not batch_alter_table: on SQLite that copies the jobs table and drops the old one, and the drop would cascade to
# every job's frames, segments and tracks. Both databases add and drop a nullable column in place (SQLite 3.35+).
def upgrade() -> None:
    op.add_column("jobs", sa.Column("frames_reserved", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE jobs DROP COLUMN frames_reserved")
