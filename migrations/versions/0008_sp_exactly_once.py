"""exactly once: a key per accounting record and per decision row (issue 13, "no data lost")

A RADIUS worker that cannot reach the database spools accounting records and decision rows to
a local file and replays them when the database returns (radius/spool.py). A record written
just before the outage may be written again from the spool; the keys make the second write a
no-op (ON CONFLICT DO NOTHING):

- `accounting_records`: one row per Accounting-Request applied, keyed by the packet's identity
  (`record_key`); `service.accounting.apply_accounting` applies a record to its session only
  when its key is new, so a replayed Interim or Stop never counts twice.
- `decisions.log_key`: the writer, process start and sequence number of a decision row (NULL
  for rows written before this migration and for `policy explain --keep`).

Revision ID: 0008_sp
Revises: 0007 (the lead renumbers the chain at merge)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models.base

revision = "0008_sp"
down_revision = "0007"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UTC = service.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounting_records",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("record_key", sa.String(length=64), nullable=False),
        sa.Column("nas_id", _ID, nullable=True),
        sa.Column("acct_session_id", sa.String(length=255), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("event_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounting_records")),
        sa.UniqueConstraint("record_key", name="uq_accounting_records_record_key"),
    )
    op.create_index("ix_accounting_records_event_at", "accounting_records", ["event_at"])
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("log_key", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("uq_decisions_log_key", ["log_key"])


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_constraint("uq_decisions_log_key", type_="unique")
        batch.drop_column("log_key")
    op.drop_index("ix_accounting_records_event_at", table_name="accounting_records")
    op.drop_table("accounting_records")
