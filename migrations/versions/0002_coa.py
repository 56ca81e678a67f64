"""coa tables: the durable queue of CoA / Disconnect attempts

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite

import service.models.base

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_UTC = service.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "coa_requests",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("updated_at", _UTC, nullable=False),
        sa.Column("finished_at", _UTC, nullable=True),
        sa.Column("device_id", _ID, nullable=True),
        sa.Column("mac", sa.String(length=17), nullable=True),
        sa.Column("session_row_id", _ID, nullable=True),
        sa.Column("nas_id", _ID, nullable=True),
        sa.Column("nas_ip", sa.String(length=64), nullable=True),
        sa.Column("acct_session_id", sa.String(length=255), nullable=True),
        sa.Column("username", sa.String(length=255), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _UTC, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=True),
        sa.Column("old_access", sa.String(length=32), nullable=True),
        sa.Column("old_vlan", sa.Integer(), nullable=True),
        sa.Column("new_access", sa.String(length=32), nullable=True),
        sa.Column("new_vlan", sa.Integer(), nullable=True),
        sa.Column("error_cause", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column(
            "history",
            sa.JSON()
            .with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
            .with_variant(sqlite.JSON(), "sqlite"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_coa_requests_device_id_devices"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["session_row_id"],
            ["accounting_sessions.id"],
            name=op.f("fk_coa_requests_session_row_id_accounting_sessions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["nas_id"],
            ["nas_clients.id"],
            name=op.f("fk_coa_requests_nas_id_nas_clients"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coa_requests")),
    )
    op.create_index("ix_coa_requests_state_next", "coa_requests", ["state", "next_attempt_at"])
    op.create_index("ix_coa_requests_mac", "coa_requests", ["mac"])


def downgrade() -> None:
    op.drop_index("ix_coa_requests_mac", table_name="coa_requests")
    op.drop_index("ix_coa_requests_state_next", table_name="coa_requests")
    op.drop_table("coa_requests")
