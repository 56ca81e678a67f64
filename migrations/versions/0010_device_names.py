"""device names: what devices call themselves on the local network (mDNS, LLMNR, NetBIOS, DHCP)

One row per (MAC, name, source) with when it was first and last seen, upserted by the monitor's
writer (issue 14, service/device_names.py). Not partitioned: a school has a few thousand.

Revision ID: 0010_dn
Revises: 0009_q
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models.base

revision = "0010_dn"
down_revision = "0009_q"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UTC = service.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "device_names",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("site_code", sa.String(length=64), nullable=True),
        sa.Column("first_seen", _UTC, nullable=False),
        sa.Column("last_seen", _UTC, nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_names")),
        sa.UniqueConstraint("mac", "name", "source", name="uq_device_names_mac_name_source"),
    )
    op.create_index("ix_device_names_last_seen", "device_names", ["last_seen"])


def downgrade() -> None:
    op.drop_index("ix_device_names_last_seen", table_name="device_names")
    op.drop_table("device_names")
