"""keyed audit chain: a version per audit entry (0 plain SHA-256, 1 HMAC with the audit key)

Entries written before this revision keep version 0 and verify as they always did; from the
first entry written with the audit key (`schoolgate db upgrade` generates it) every entry is
version 1 (issue 11, service/audit.py).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(
            sa.Column("chain_version", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("chain_version")
