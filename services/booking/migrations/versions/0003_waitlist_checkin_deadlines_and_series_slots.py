"""waitlist, check-in deadlines and series slots

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 12:07:34.467573
"""
import datetime as dt
import json

from alembic import op
import sqlalchemy as sa

import shared.db


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

WAITING = sa.text("status = 'waiting'")
DUE = sa.text('checkin_due IS NOT NULL')


def upgrade() -> None:
    op.create_table('waitlist_entries',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('resource_id', sa.String(length=36), nullable=False),
    sa.Column('lab_id', sa.String(length=36), nullable=False),
    sa.Column('user_sub', sa.String(length=200), nullable=False),
    sa.Column('user_name', sa.String(length=200), nullable=False),
    sa.Column('user_email', sa.String(length=320), nullable=False),
    sa.Column('user_org', sa.String(length=100), nullable=False),
    sa.Column('user_roles', sa.JSON(), nullable=False),
    sa.Column('title', sa.String(length=500), nullable=False),
    sa.Column('project', sa.String(length=200), nullable=False),
    sa.Column('start_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('end_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('booking_id', sa.String(length=36), nullable=True),
    sa.Column('violations', sa.JSON(), nullable=True),
    sa.Column('created_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('waitlist_entries', schema=None) as batch_op:
        batch_op.create_index('ix_waitlist_lab_start', ['lab_id', 'start_at'], unique=False)
        batch_op.create_index('ix_waitlist_user_start', ['user_sub', 'start_at'], unique=False)
        # Waiting entries only: the queue of a resource, and the expiry job's.
        batch_op.create_index('ix_waitlist_waiting', ['resource_id', 'start_at'], unique=False,
                              postgresql_where=WAITING, sqlite_where=WAITING)
        batch_op.create_index('ix_waitlist_waiting_start', ['start_at'], unique=False,
                              postgresql_where=WAITING, sqlite_where=WAITING)

    # Adding nullable columns and an index never rebuilds the table, so the SQLite
    # overlap triggers of 0001 stay as they are. no_show is not a live status: the
    # constraint and the triggers already let its time go.
    with op.batch_alter_table('bookings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('checkin_due', shared.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('recurrence_id', shared.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_bookings_checkin_due', ['checkin_due'], unique=False,
                              postgresql_where=DUE, sqlite_where=DUE)
    _backfill()


def _backfill() -> None:
    """Series occurrences get their slot; upcoming bookings of resources that require check-in, their deadline."""
    bind = op.get_bind()
    op.execute("UPDATE bookings SET recurrence_id = start_at WHERE series_id IS NOT NULL")
    bookings = sa.table('bookings', sa.column('id', sa.String), sa.column('resource_id', sa.String),
                        sa.column('status', sa.String), sa.column('start_at', shared.db.UTCDateTime()),
                        sa.column('checked_in_at', shared.db.UTCDateTime()),
                        sa.column('checkin_due', shared.db.UTCDateTime()))
    now = dt.datetime.now(dt.UTC)
    for resource_id, policy in bind.execute(sa.text("SELECT id, policy FROM resource_views")).all():
        policy = json.loads(policy) if isinstance(policy, str) else (policy or {})
        if not policy.get('checkin_required'):
            continue
        grace = dt.timedelta(minutes=int(policy.get('checkin_grace_minutes', 15)))
        rows = bind.execute(sa.select(bookings.c.id, bookings.c.start_at).where(
            bookings.c.resource_id == resource_id, bookings.c.status.in_(('confirmed', 'pending')),
            bookings.c.start_at > now, bookings.c.checked_in_at.is_(None))).all()
        for booking_id, start in rows:
            bind.execute(sa.update(bookings).where(bookings.c.id == booking_id).values(checkin_due=start + grace))


def downgrade() -> None:
    op.drop_index('ix_bookings_checkin_due', table_name='bookings')
    if op.get_bind().dialect.name == 'sqlite':
        # Native DROP COLUMN (SQLite 3.35+) keeps the table, and with it the overlap triggers of 0001.
        op.execute('ALTER TABLE bookings DROP COLUMN recurrence_id')
        op.execute('ALTER TABLE bookings DROP COLUMN checkin_due')
    else:
        op.drop_column('bookings', 'recurrence_id')
        op.drop_column('bookings', 'checkin_due')

    with op.batch_alter_table('waitlist_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_waitlist_waiting_start', postgresql_where=WAITING, sqlite_where=WAITING)
        batch_op.drop_index('ix_waitlist_waiting', postgresql_where=WAITING, sqlite_where=WAITING)
        batch_op.drop_index('ix_waitlist_user_start')
        batch_op.drop_index('ix_waitlist_lab_start')

    op.drop_table('waitlist_entries')
