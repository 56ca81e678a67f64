"""change log: what each change-counter value changed, for RADIUS snapshots patched in place

Every transaction that changes a fact the RADIUS snapshot holds writes (version, kind, key)
rows here, under the change counter's row lock, with the counter value it committed: a device
by MAC, a device by id (its exceptions, signatures), a person by id, or `full` (a NAS client,
a site, a policy, an agreement's kind). A RADIUS worker reads the rows after the version it
holds and reloads only those rows (issue 13, service/change_log.py, radius/snapshot.py).
Rows older than an hour are pruned; a `pruned` row marks the last version pruned.

Revision ID: 0011_sn
Revises: 0010_dn
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models.base

revision = "0011_sn"
down_revision = "0010_dn"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UTC = service.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "change_log",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("version", _ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("recorded_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_change_log")),
    )
    op.create_index("ix_change_log_version", "change_log", ["version"])


def downgrade() -> None:
    op.drop_index("ix_change_log_version", table_name="change_log")
    op.drop_table("change_log")
