"""deletion and retention: stored bytes on rows, retention, datasets deletable

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Rows written before this migration record their upload's size, not what storage holds; they
start with that (an uploaded model's unpacked size is unknown here: the migration never reads
storage). Jobs start at 0 checkpoint bytes until their next save.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("datasets", "models"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("stored_bytes", sa.BigInteger(), server_default="0", nullable=False)
            )
        op.execute(f"UPDATE {table} SET stored_bytes = size_bytes")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("stored_bytes", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("artifacts_expired_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        # A finished job keeps naming a dataset deleted since; an active one blocks the delete.
        batch_op.drop_constraint("fk_jobs_dataset_id_datasets", type_="foreignkey")
        batch_op.drop_constraint("fk_jobs_validation_dataset_id_datasets", type_="foreignkey")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("retention_days", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("retention_days")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # Fails while a job names a deleted dataset: such history cannot go back to 0004.
        batch_op.create_foreign_key(
            "fk_jobs_validation_dataset_id_datasets", "datasets", ["validation_dataset_id"], ["id"]
        )
        batch_op.create_foreign_key(
            "fk_jobs_dataset_id_datasets", "datasets", ["dataset_id"], ["id"]
        )
        batch_op.drop_column("artifacts_expired_at")
        batch_op.drop_column("stored_bytes")
    for table in ("models", "datasets"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("stored_bytes")
