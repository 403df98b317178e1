"""webhook outbox and ownership: delivery states, and hand-backs apart from attempts

A webhook delivery is recorded as `pending` in the transaction that ends its job and moves
through `sending` to `succeeded` or `failed`; `due_at` says when the reaper may send it if its
message never ran. `jobs.handed_back` counts voluntary hand-backs (SIGTERM), which are not lost
workers: the attempts cap counts `attempts - handed_back`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        # every row before this one was a finished attempt
        batch_op.add_column(
            sa.Column("state", sa.String(length=16), nullable=False, server_default="failed")
        )
        batch_op.add_column(sa.Column("due_at", app.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("claimed_at", app.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(batch_op.f("ix_webhook_deliveries_state"), ["state"], unique=False)
    op.execute("UPDATE webhook_deliveries SET state = 'succeeded' WHERE succeeded")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("handed_back", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("handed_back")
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_webhook_deliveries_state"))
        batch_op.drop_column("claimed_at")
        batch_op.drop_column("due_at")
        batch_op.drop_column("state")
