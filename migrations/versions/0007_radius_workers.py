"""radius workers: the snapshot each RADIUS process answers from; the change a CoA waits for

Each RADIUS worker reports the change counter it has loaded (`radius_workers`), and each CoA
request records the change it announces (`coa_requests.change_version`): the dispatcher sends
it once every live worker has loaded that change (issue 12, service/enforcement/workers.py).

Revision ID: 0007
Revises: 0005 (the lead relinks it after 0006)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models.base

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UTC = service.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "radius_workers",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("loaded_version", _ID, nullable=False),
        sa.Column("started_at", _UTC, nullable=False),
        sa.Column("heartbeat_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_radius_workers")),
        sa.UniqueConstraint("node", "pid", name="uq_radius_workers_node_pid"),
    )
    with op.batch_alter_table("coa_requests") as batch:
        batch.add_column(sa.Column("change_version", _ID, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("coa_requests") as batch:
        batch.drop_column("change_version")
    op.drop_table("radius_workers")
