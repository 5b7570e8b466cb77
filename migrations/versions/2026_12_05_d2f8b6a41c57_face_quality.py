"""what makes each face readable: the sharpness of its crop and its head's yaw and roll

Revision ID: d2f8b6a41c57
Revises: a7c3e91f4d20
Create Date: 2026-12-05 00:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "d2f8b6a41c57"
down_revision = "a7c3e91f4d20"
branch_labels = None
depends_on = None

COLUMNS = ("sharpness", "yaw", "roll")


# Added and dropped in place, not with batch_alter_table: on SQLite that would copy the faces table (a job's faces
# are most of the database) and drop the old one. Both databases do it in place (SQLite 3.35+).
def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("faces", sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    for name in COLUMNS:
        op.execute(f"ALTER TABLE faces DROP COLUMN {name}")
