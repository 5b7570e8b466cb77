"""finished jobs' cached summary and plot (result_caches), and frames indexed by time within their job

Revision ID: 359a45686e74
Revises: 8b2d4e6f1a93
Create Date: 2026-12-03 00:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "359a45686e74"
down_revision = "8b2d4e6f1a93"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "result_caches",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("plot_png", sa.LargeBinary(), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_result_caches_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_result_caches")),
    )
    # frames is the largest table but one: on PostgreSQL the index is built without blocking the workers' writes,
    # which needs a statement outside the migration's transaction.
    with op.get_context().autocommit_block():
        op.create_index("ix_frames_job_timestamp", "frames", ["job_id", "timestamp_ms"], unique=False,
                        postgresql_concurrently=True)


def downgrade() -> None:
    op.drop_index("ix_frames_job_timestamp", table_name="frames")
    op.drop_table("result_caches")
