"""signin failures: the sign-in throttle's counts, shared by every node (issue 13)

Each portal and RADIUS node used to count failed sign-ins in its own memory, so two nodes
behind a load balancer gave an attacker twice the tries and a restart forgot them all. On
PostgreSQL the table is UNLOGGED: losing it in a crash only resets a throttle, and the
constant small upserts must not cost WAL (or reach a replica).

Revision ID: 0013_th
Revises: 0012_dh
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_th"
down_revision = "0012_dh"
branch_labels = None
depends_on = None


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "signin_failures",
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.Double(), nullable=False),
        sa.Column("delay_seconds", sa.Double(), nullable=False),
        sa.Column("forget_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_signin_failures")),
        prefixes=["UNLOGGED"] if postgres else [],
    )
    op.create_index("ix_signin_failures_forget_at", "signin_failures", ["forget_at"])


def downgrade() -> None:
    op.drop_index("ix_signin_failures_forget_at", table_name="signin_failures")
    op.drop_table("signin_failures")
