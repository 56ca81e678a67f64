"""traffic tables: flows, DNS, visits, alerts, IP bindings (issue 6, the monitor)

On PostgreSQL each table is declaratively partitioned by day on its time column, with a DEFAULT
partition so an insert never fails; the monitor's writer adds the daily partitions (in schema
`traffic_parts`) as it needs them and retention drops them. SQLite gets plain tables.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models.base
from service.models.base import BigIntId

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UTC = service.models.base.UTCDateTime
JSON = service.models.base.JSONType

TABLES: dict[str, tuple[str, list[tuple[str, object, bool]]]] = {
    # table: (partition column, [(column, type, nullable)])
    "traffic_flows": (
        "started_at",
        [
            ("site_code", sa.String(64), True),
            ("started_at", UTC(), False),
            ("ended_at", UTC(), False),
            ("duration", sa.Float(), False),
            ("proto", sa.String(8), False),
            ("orig_ip", sa.String(64), False),
            ("orig_port", sa.Integer(), False),
            ("resp_ip", sa.String(64), False),
            ("resp_port", sa.Integer(), False),
            ("vlan", sa.Integer(), True),
            ("orig_packets", BigIntId, False),
            ("orig_bytes", BigIntId, False),
            ("resp_packets", BigIntId, False),
            ("resp_bytes", BigIntId, False),
            ("end_reason", sa.String(16), False),
            ("service", sa.String(16), True),
            ("server_name", sa.String(255), True),
            ("name_source", sa.String(8), True),
            ("p2p", sa.String(32), True),
            ("info_hash", sa.String(40), True),
            ("client_ip", sa.String(64), True),
            ("mac", sa.String(17), True),
            ("mac_source", sa.String(16), True),
            ("device_id", BigIntId, True),
            ("person_id", BigIntId, True),
        ],
    ),
    "traffic_dns": (
        "queried_at",
        [
            ("site_code", sa.String(64), True),
            ("queried_at", UTC(), False),
            ("client_ip", sa.String(64), False),
            ("client_port", sa.Integer(), False),
            ("server_ip", sa.String(64), False),
            ("server_port", sa.Integer(), False),
            ("trans_id", sa.Integer(), False),
            ("query", sa.String(255), True),
            ("qtype", sa.Integer(), True),
            ("qtype_name", sa.String(16), True),
            ("rcode", sa.Integer(), True),
            ("rcode_name", sa.String(16), True),
            ("rtt", sa.Float(), True),
            ("answers", JSON, False),
            ("ttls", JSON, False),
            ("mac", sa.String(17), True),
            ("device_id", BigIntId, True),
            ("person_id", BigIntId, True),
        ],
    ),
    "traffic_visits": (
        "started_at",
        [
            ("site_code", sa.String(64), True),
            ("started_at", UTC(), False),
            ("ended_at", UTC(), False),
            ("duration", sa.Float(), False),
            ("server_name", sa.String(255), False),
            ("client_ip", sa.String(64), False),
            ("mac", sa.String(17), True),
            ("device_id", BigIntId, True),
            ("person_id", BigIntId, True),
            ("flows", sa.Integer(), False),
            ("bytes_up", BigIntId, False),
            ("bytes_down", BigIntId, False),
            ("category", sa.String(64), True),
        ],
    ),
    "traffic_alerts": (
        "raised_at",
        [
            ("site_code", sa.String(64), True),
            ("raised_at", UTC(), False),
            ("kind", sa.String(16), False),
            ("category", sa.String(64), False),
            ("severity", sa.String(16), False),
            ("client_ip", sa.String(64), False),
            ("mac", sa.String(17), True),
            ("device_id", BigIntId, True),
            ("person_id", BigIntId, True),
            ("evidence", sa.String(512), False),
        ],
    ),
    "traffic_bindings": (
        "seen_at",
        [
            ("site_code", sa.String(64), True),
            ("seen_at", UTC(), False),
            ("source", sa.String(8), False),
            ("msg_type", sa.String(16), True),
            ("ip", sa.String(64), True),
            ("mac", sa.String(17), False),
            ("hostname", sa.String(255), True),
            ("lease_seconds", sa.Integer(), True),
            ("requested_ip", sa.String(64), True),
            ("is_lease", sa.Boolean(), False),
        ],
    ),
}

INDEXES = {
    "traffic_flows": [
        ("ix_traffic_flows_started_at", ["started_at"]),
        ("ix_traffic_flows_mac", ["mac"]),
    ],
    "traffic_dns": [("ix_traffic_dns_queried_at", ["queried_at"])],
    "traffic_visits": [("ix_traffic_visits_started_at", ["started_at"])],
    "traffic_alerts": [("ix_traffic_alerts_raised_at", ["raised_at"])],
    "traffic_bindings": [("ix_traffic_bindings_seen_at", ["seen_at"])],
}


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("CREATE SCHEMA IF NOT EXISTS traffic_parts")
    for table, (when, columns) in TABLES.items():
        cols = [sa.Column(name, type_, nullable=nullable) for name, type_, nullable in columns]  # type: ignore[arg-type]
        if postgres:
            op.create_table(
                table,
                sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
                *cols,
                sa.PrimaryKeyConstraint("id", when, name=f"pk_{table}"),
                postgresql_partition_by=f"RANGE ({when})",
            )
            op.execute(f"CREATE TABLE traffic_parts.{table}_default PARTITION OF {table} DEFAULT")
        else:
            op.create_table(
                table,
                sa.Column("id", BigIntId, nullable=False),
                *cols,
                sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
            )
        for name, index_cols in INDEXES[table]:
            op.create_index(name, table, index_cols)


def downgrade() -> None:
    for table in reversed(list(TABLES)):
        op.drop_table(table)  # on PostgreSQL this drops its partitions too
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP SCHEMA IF EXISTS traffic_parts CASCADE")
