"""core schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 23:12:20.922417
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import service.models.base
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=255), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('detail', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql').with_variant(sqlite.JSON(), 'sqlite'), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log')),
    sa.UniqueConstraint('hash', name=op.f('uq_audit_log_hash'))
    )
    op.create_table('change_counter',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('value', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('changed_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_change_counter'))
    )
    op.create_table('decisions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('decided_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('site_code', sa.String(length=64), nullable=True),
    sa.Column('nas_name', sa.String(length=128), nullable=True),
    sa.Column('nas_ip', sa.String(length=64), nullable=True),
    sa.Column('mac', sa.String(length=17), nullable=True),
    sa.Column('username', sa.String(length=255), nullable=True),
    sa.Column('location', sa.String(length=128), nullable=True),
    sa.Column('access', sa.String(length=32), nullable=False),
    sa.Column('vlan', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('rule', sa.String(length=255), nullable=False),
    sa.Column('session_timeout', sa.Integer(), nullable=True),
    sa.Column('micros', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_decisions'))
    )
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index('ix_decisions_decided_at', ['decided_at'], unique=False)
        batch_op.create_index('ix_decisions_mac', ['mac'], unique=False)

    op.create_table('sites',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('created_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sites')),
    sa.UniqueConstraint('code', name=op.f('uq_sites_code'))
    )
    op.create_table('agreements',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('kind', sa.Enum('visitor_aua', 'staff_byod', name='agreementkind', native_enum=False, length=32), nullable=False),
    sa.Column('site_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=255), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('published_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('published_by', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_agreements_site_id_sites'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agreements')),
    sa.UniqueConstraint('kind', 'site_id', 'version', name='uq_agreements_kind_site_version')
    )
    op.create_table('locations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('site_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('patterns', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql').with_variant(sqlite.JSON(), 'sqlite'), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_locations_site_id_sites'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_locations')),
    sa.UniqueConstraint('site_id', 'name', name='uq_locations_site_name')
    )
    op.create_table('nas_clients',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('site_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('secret', sa.String(length=255), nullable=False),
    sa.Column('vendor', sa.Enum('generic', 'cisco', 'aruba', 'unifi', 'meraki', 'ruckus', name='nasvendor', native_enum=False, length=32), nullable=False),
    sa.Column('coa_port', sa.Integer(), nullable=False),
    sa.Column('require_message_authenticator', sa.Boolean(), nullable=False),
    sa.Column('created_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_nas_clients_site_id_sites'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_nas_clients')),
    sa.UniqueConstraint('site_id', 'name', name='uq_nas_clients_site_name')
    )
    op.create_table('people',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('site_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('role', sa.Enum('staff', 'learner', 'visitor', 'contractor', 'governor', 'volunteer', name='role', native_enum=False, length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('email', sa.String(length=255), nullable=True),
    sa.Column('username', sa.String(length=128), nullable=True),
    sa.Column('year_group', sa.Integer(), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('left_at', service.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('password_hash', sa.String(length=255), nullable=True),
    sa.Column('failed_logins', sa.Integer(), nullable=False),
    sa.Column('locked_until', service.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_people_site_id_sites'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_people')),
    sa.UniqueConstraint('email', name=op.f('uq_people_email')),
    sa.UniqueConstraint('username', name=op.f('uq_people_username'))
    )
    op.create_table('site_policies',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('site_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('source_name', sa.String(length=512), nullable=False),
    sa.Column('toml', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('loaded_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('loaded_by', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_site_policies_site_id_sites'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_site_policies')),
    sa.UniqueConstraint('site_id', 'version', name='uq_site_policies_site_version')
    )
    op.create_table('accounting_sessions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('nas_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('nas_ip', sa.String(length=64), nullable=True),
    sa.Column('nas_identifier', sa.String(length=255), nullable=True),
    sa.Column('site_code', sa.String(length=64), nullable=True),
    sa.Column('mac', sa.String(length=17), nullable=True),
    sa.Column('username', sa.String(length=255), nullable=True),
    sa.Column('framed_ip', sa.String(length=64), nullable=True),
    sa.Column('acct_session_id', sa.String(length=255), nullable=False),
    sa.Column('called_station_id', sa.String(length=255), nullable=True),
    sa.Column('nas_port_id', sa.String(length=255), nullable=True),
    sa.Column('location', sa.String(length=128), nullable=True),
    sa.Column('started_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('stopped_at', service.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('session_time', sa.Integer(), nullable=True),
    sa.Column('input_octets', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('output_octets', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('terminate_cause', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['nas_id'], ['nas_clients.id'], name=op.f('fk_accounting_sessions_nas_id_nas_clients'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_accounting_sessions')),
    sa.UniqueConstraint('nas_id', 'acct_session_id', 'mac', name='uq_accounting_sessions_nas_session_mac')
    )
    with op.batch_alter_table('accounting_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_accounting_sessions_framed_ip', ['framed_ip'], unique=False)
        batch_op.create_index('ix_accounting_sessions_mac', ['mac'], unique=False)
        batch_op.create_index('ix_accounting_sessions_started_at', ['started_at'], unique=False)

    op.create_table('devices',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('site_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('mac', sa.String(length=17), nullable=False),
    sa.Column('device_class', sa.Enum('school_single', 'school_shared', 'authorised', 'staff_owned', 'learner_owned', 'visitor_owned', name='deviceclass', native_enum=False, length=32), nullable=False),
    sa.Column('owner_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('asset_tag', sa.String(length=128), nullable=True),
    sa.Column('name', sa.String(length=255), nullable=True),
    sa.Column('status', sa.Enum('pending', 'active', 'revoked', 'lost', 'exited', name='devicestatus', native_enum=False, length=32), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('needs_reassignment', sa.Boolean(), nullable=False),
    sa.Column('created_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status_changed_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['owner_id'], ['people.id'], name=op.f('fk_devices_owner_id_people'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_devices_site_id_sites'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_devices')),
    sa.UniqueConstraint('mac', name=op.f('uq_devices_mac'))
    )
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.create_index('ix_devices_owner_id', ['owner_id'], unique=False)

    op.create_table('approvals',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('device_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('approved_by', sa.String(length=255), nullable=False),
    sa.Column('approved_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('note', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_approvals_device_id_devices'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approvals'))
    )
    op.create_table('exceptions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('device_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('access', sa.Enum('full', 'segregated', 'internet', 'none', 'registration', name='access', native_enum=False, length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('approved_by', sa.String(length=255), nullable=False),
    sa.Column('valid_from', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('valid_until', service.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', service.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_exceptions_device_id_devices'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exceptions'))
    )
    with op.batch_alter_table('exceptions', schema=None) as batch_op:
        batch_op.create_index('ix_exceptions_device_id', ['device_id'], unique=False)

    op.create_table('incidents',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('device_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.Enum('lost', 'stolen', 'compromised', name='incidentkind', native_enum=False, length=32), nullable=False),
    sa.Column('reported_by', sa.String(length=255), nullable=False),
    sa.Column('reported_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('dpo_notified_at', service.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_incidents_device_id_devices'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_incidents'))
    )
    op.create_table('signatures',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('agreement_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('person_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('device_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('agreement_sha256', sa.String(length=64), nullable=False),
    sa.Column('signed_at', service.models.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('typed_name', sa.String(length=255), nullable=False),
    sa.Column('organisation', sa.String(length=255), nullable=True),
    sa.Column('visiting', sa.String(length=255), nullable=True),
    sa.Column('client_ip', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.String(length=512), nullable=True),
    sa.Column('valid_until', service.models.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('source', sa.Enum('portal', 'paper', 'api', name='signaturesource', native_enum=False, length=32), nullable=False),
    sa.Column('recorded_by', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['agreement_id'], ['agreements.id'], name=op.f('fk_signatures_agreement_id_agreements')),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_signatures_device_id_devices'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['person_id'], ['people.id'], name=op.f('fk_signatures_person_id_people'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signatures'))
    )
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.create_index('ix_signatures_device_id', ['device_id'], unique=False)
        batch_op.create_index('ix_signatures_person_id', ['person_id'], unique=False)


    counter = sa.table(
        "change_counter",
        sa.column("id", sa.Integer()),
        sa.column("value", sa.BigInteger()),
        sa.column("changed_at", service.models.base.UTCDateTime()),
    )
    op.bulk_insert(counter, [{"id": 1, "value": 0, "changed_at": datetime.now(UTC)}])

def downgrade() -> None:
    with op.batch_alter_table('signatures', schema=None) as batch_op:
        batch_op.drop_index('ix_signatures_person_id')
        batch_op.drop_index('ix_signatures_device_id')

    op.drop_table('signatures')
    op.drop_table('incidents')
    with op.batch_alter_table('exceptions', schema=None) as batch_op:
        batch_op.drop_index('ix_exceptions_device_id')

    op.drop_table('exceptions')
    op.drop_table('approvals')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_index('ix_devices_owner_id')

    op.drop_table('devices')
    with op.batch_alter_table('accounting_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_accounting_sessions_started_at')
        batch_op.drop_index('ix_accounting_sessions_mac')
        batch_op.drop_index('ix_accounting_sessions_framed_ip')

    op.drop_table('accounting_sessions')
    op.drop_table('site_policies')
    op.drop_table('people')
    op.drop_table('nas_clients')
    op.drop_table('locations')
    op.drop_table('agreements')
    op.drop_table('sites')
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index('ix_decisions_mac')
        batch_op.drop_index('ix_decisions_decided_at')

    op.drop_table('decisions')
    op.drop_table('change_counter')
    op.drop_table('audit_log')
