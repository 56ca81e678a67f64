"""accounting sessions: changed_at, when the row was last written

A running monitor follows RADIUS accounting without reloading it (issue 14): it asks for the
sessions written since its last look. `updated_at` is the time a record reports (a record
spooled through a database outage arrives late with an old time), so each write also stamps
`changed_at` with the writer's clock, indexed. Existing rows take their `updated_at`.

Revision ID: 0014_ml
Revises: 0013_th
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models.base

revision = "0014_ml"
down_revision = "0013_th"
branch_labels = None
depends_on = None

_UTC = service.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("accounting_sessions") as batch:
        batch.add_column(sa.Column("changed_at", _UTC, nullable=True))
    op.execute("UPDATE accounting_sessions SET changed_at = updated_at")
    with op.batch_alter_table("accounting_sessions") as batch:
        batch.alter_column("changed_at", existing_type=_UTC, nullable=False)
        batch.create_index("ix_accounting_sessions_changed_at", ["changed_at"])


def downgrade() -> None:
    with op.batch_alter_table("accounting_sessions") as batch:
        batch.drop_index("ix_accounting_sessions_changed_at")
        batch.drop_column("changed_at")
