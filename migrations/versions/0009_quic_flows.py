"""traffic flows: the application protocol version and ALPN a client offered (issue 14, QUIC)

`version` is "quic-v1", "quic-v2", "quic-draft29", "gquic-Q025" for QUIC flows and the highest
TLS version a ClientHello offered ("tls1.3") for TLS over TCP; `alpn` the protocols it offered,
comma-separated as sent ("h3", "h2,http/1.1"). On PostgreSQL the flows table is partitioned by
day: ALTER on the parent adds the columns to every partition.

Revision ID: 0009_q
Revises: 0008_sp
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_q"
down_revision = "0008_sp"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("traffic_flows") as batch:
        batch.add_column(sa.Column("version", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("alpn", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("traffic_flows") as batch:
        batch.drop_column("alpn")
        batch.drop_column("version")
