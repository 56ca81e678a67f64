"""visitor verification: codes reception issues, sponsorships staff approve, and the link
from a visitor's signature to the one that verified them (issue 12, `[visitor] verify`)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import service.models.base

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = service.models.base.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "visitor_codes",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("site_id", ID, nullable=False),
        sa.Column("code_sha256", sa.String(length=64), nullable=False),
        sa.Column("visitor_name", sa.String(length=255), nullable=False),
        sa.Column("daily", sa.Boolean(), nullable=False),
        sa.Column("issued_by", sa.String(length=255), nullable=False),
        sa.Column("issued_at", UTC_TIME, nullable=False),
        sa.Column("valid_until", UTC_TIME, nullable=False),
        sa.Column("used_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["site_id"],
            ["sites.id"],
            name=op.f("fk_visitor_codes_site_id_sites"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_visitor_codes")),
    )
    op.create_index("ix_visitor_codes_code_sha256", "visitor_codes", ["code_sha256"])
    op.create_table(
        "sponsorships",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("site_id", ID, nullable=False),
        sa.Column("sponsor_id", ID, nullable=True),
        sa.Column("sponsor_email", sa.String(length=255), nullable=False),
        sa.Column("sponsor_name", sa.String(length=255), nullable=False),
        sa.Column("agreement_id", ID, nullable=False),
        sa.Column("device_mac", sa.String(length=17), nullable=False),
        sa.Column("visitor_name", sa.String(length=255), nullable=False),
        sa.Column("typed_name", sa.String(length=255), nullable=False),
        sa.Column("organisation", sa.String(length=255), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("requested_at", UTC_TIME, nullable=False),
        sa.Column("expires_at", UTC_TIME, nullable=False),
        sa.Column("approved_at", UTC_TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_sponsorships_site_id_sites"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["sponsor_id"],
            ["people.id"],
            name=op.f("fk_sponsorships_sponsor_id_people"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["agreement_id"], ["agreements.id"], name=op.f("fk_sponsorships_agreement_id_agreements")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sponsorships")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_sponsorships_token_sha256")),
    )
    op.create_index("ix_sponsorships_device_mac", "sponsorships", ["device_mac"])
    with op.batch_alter_table("signatures", schema=None) as batch_op:
        batch_op.add_column(sa.Column("visitor_code_id", ID, nullable=True))
        batch_op.add_column(sa.Column("sponsorship_id", ID, nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_signatures_visitor_code_id_visitor_codes"),
            "visitor_codes",
            ["visitor_code_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_signatures_sponsorship_id_sponsorships"),
            "sponsorships",
            ["sponsorship_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("signatures", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_signatures_sponsorship_id_sponsorships"), type_="foreignkey"
        )
        batch_op.drop_constraint(
            batch_op.f("fk_signatures_visitor_code_id_visitor_codes"), type_="foreignkey"
        )
        batch_op.drop_column("sponsorship_id")
        batch_op.drop_column("visitor_code_id")
    op.drop_index("ix_sponsorships_device_mac", table_name="sponsorships")
    op.drop_table("sponsorships")
    op.drop_index("ix_visitor_codes_code_sha256", table_name="visitor_codes")
    op.drop_table("visitor_codes")
