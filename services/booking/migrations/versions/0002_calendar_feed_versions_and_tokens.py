"""calendar feed versions and tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 11:17:07.287617
"""
from alembic import op
import sqlalchemy as sa

import shared.db


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One secret per user, kept only as its SHA-256; looked up by that hash.
    op.create_table('feed_tokens',
    sa.Column('user_sub', sa.String(length=200), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('user_sub'),
    sa.UniqueConstraint('token_hash')
    )
    # (scope, key) -> how often that feed changed; the ETag of a feed comes from here.
    op.create_table('feed_versions',
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('changed_at', shared.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'key')
    )


def downgrade() -> None:
    op.drop_table('feed_versions')
    op.drop_table('feed_tokens')
