"""dhcp in full: server, vendor class, relay agent (option 82), domain, message on bindings

`traffic_bindings` rows of DHCP messages gain what Zeek's dhcp.log carries (server address,
domain, the NAK/DECLINE message, transaction id) and what tells an IT lead where a device
is plugged in: the vendor class (option 60) and the relay agent's circuit and remote id
(option 82) with the relay's address (issue 14). All nullable: ARP rows and rows recorded
before this revision have none. On PostgreSQL the columns are added to the partitioned
parent, which adds them to every partition.

Revision ID: 0012_dh
Revises: 0011_sn
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_dh"
down_revision = "0011_sn"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
COLUMNS = (
    ("server_ip", sa.String(64)),
    ("vendor_class", sa.String(255)),
    ("circuit_id", sa.String(255)),
    ("remote_id", sa.String(255)),
    ("relay_ip", sa.String(64)),
    ("domain", sa.String(255)),
    ("message", sa.String(255)),
    ("trans_id", _ID),
)


def upgrade() -> None:
    with op.batch_alter_table("traffic_bindings") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("traffic_bindings") as batch:
        for name, _type in reversed(COLUMNS):
            batch.drop_column(name)
