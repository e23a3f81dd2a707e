"""initial booking schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-27 10:42:17.109647
"""
from alembic import op
import sqlalchemy as sa

import shared.db


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('bookings',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('resource_id', sa.String(length=36), nullable=False),
    sa.Column('lab_id', sa.String(length=36), nullable=False),
    sa.Column('series_id', sa.String(length=36), nullable=True),
    sa.Column('rrule', sa.String(length=500), nullable=True),
    sa.Column('user_sub', sa.String(length=200), nullable=False),
    sa.Column('user_name', sa.String(length=200), nullable=False),
    sa.Column('user_email', sa.String(length=320), nullable=False),
    sa.Column('user_org', sa.String(length=100), nullable=False),
    sa.Column('title', sa.String(length=500), nullable=False),
    sa.Column('project', sa.String(length=200), nullable=False),
    sa.Column('start_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('end_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('hold_until', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('cancel_reason', sa.Text(), nullable=True),
    sa.Column('decided_by', sa.String(length=200), nullable=True),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('checked_in_at', shared.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.create_index('ix_bookings_lab_start', ['lab_id', 'start_at'], unique=False)
        batch_op.create_index('ix_bookings_resource_start', ['resource_id', 'start_at'], unique=False)
        batch_op.create_index('ix_bookings_series', ['series_id'], unique=False)
        batch_op.create_index('ix_bookings_user_start', ['user_sub', 'start_at'], unique=False)

    op.create_table('inbox',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=100), nullable=False),
    sa.Column('processed_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_table('lab_views',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('org', sa.String(length=100), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('managers', sa.JSON(), nullable=False),
    sa.Column('show_titles', sa.Boolean(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('outage_views',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('resource_id', sa.String(length=36), nullable=False),
    sa.Column('start_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('end_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('outage_views', schema=None) as batch_op:
        batch_op.create_index('ix_outage_views_resource', ['resource_id', 'start_at'], unique=False)

    op.create_table('outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=100), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('published_at', shared.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id')
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_unpublished', ['id'], unique=False, postgresql_where=sa.text('published_at IS NULL'), sqlite_where=sa.text('published_at IS NULL'))

    op.create_table('qualification_views',
    sa.Column('resource_id', sa.String(length=36), nullable=False),
    sa.Column('sub', sa.String(length=200), nullable=False),
    sa.Column('expires', shared.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('resource_id', 'sub')
    )
    op.create_table('resource_views',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('lab_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('category', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('policy', sa.JSON(), nullable=False),
    sa.Column('rates', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('resource_views', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_resource_views_category'), ['category'], unique=False)
        batch_op.create_index(batch_op.f('ix_resource_views_lab_id'), ['lab_id'], unique=False)
    _no_overlap()


LIVE = "('confirmed', 'pending')"


def _no_overlap() -> None:
    """The database, not the application, refuses overlapping live bookings of one resource."""
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public")
        op.execute(
            "ALTER TABLE bookings ADD CONSTRAINT bookings_no_overlap EXCLUDE USING gist "
            "(resource_id WITH =, tstzrange(start_at, hold_until, '[)') WITH &&) "
            f"WHERE (status IN {LIVE})"
        )
    else:
        # SQLite has no exclusion constraints: triggers refuse the row, and every
        # write transaction holds the database lock (BEGIN IMMEDIATE), so no two
        # writers can pass the check at once. Timestamps are fixed-format UTC
        # strings, so comparing them as text orders them correctly.
        for when in ("INSERT", "UPDATE OF start_at, hold_until, status, resource_id"):
            name = "bookings_no_overlap_insert" if when == "INSERT" else "bookings_no_overlap_update"
            op.execute(
                f"""
                CREATE TRIGGER {name} BEFORE {when} ON bookings
                WHEN NEW.status IN {LIVE} AND EXISTS (
                    SELECT 1 FROM bookings b
                    WHERE b.resource_id = NEW.resource_id
                      AND b.id != NEW.id
                      AND b.status IN {LIVE}
                      AND b.start_at < NEW.hold_until
                      AND NEW.start_at < b.hold_until
                )
                BEGIN SELECT RAISE(ABORT, 'booking_overlap'); END
                """
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS bookings_no_overlap_insert")
        op.execute("DROP TRIGGER IF EXISTS bookings_no_overlap_update")
    with op.batch_alter_table('resource_views', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_resource_views_lab_id'))
        batch_op.drop_index(batch_op.f('ix_resource_views_category'))

    op.drop_table('resource_views')
    op.drop_table('qualification_views')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_unpublished', postgresql_where=sa.text('published_at IS NULL'), sqlite_where=sa.text('published_at IS NULL'))

    op.drop_table('outbox')
    with op.batch_alter_table('outage_views', schema=None) as batch_op:
        batch_op.drop_index('ix_outage_views_resource')

    op.drop_table('outage_views')
    op.drop_table('lab_views')
    op.drop_table('inbox')
    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.drop_index('ix_bookings_user_start')
        batch_op.drop_index('ix_bookings_series')
        batch_op.drop_index('ix_bookings_resource_start')
        batch_op.drop_index('ix_bookings_lab_start')

    op.drop_table('bookings')
