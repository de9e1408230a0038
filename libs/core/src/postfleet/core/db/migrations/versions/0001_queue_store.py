"""Queue store: messages, recipients, delivery log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('delivery_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('queue_id', sa.String(length=32), nullable=False),
    sa.Column('recipient_id', sa.BigInteger(), nullable=False),
    sa.Column('address', sa.String(length=512), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('transport', sa.String(length=64), nullable=False),
    sa.Column('relay', sa.String(length=255), nullable=False),
    sa.Column('delay', sa.Double(), nullable=False),
    sa.Column('dsn', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reply', sa.Text(), nullable=False),
    sa.Column('logged_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('delivery_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delivery_log_queue_id'), ['queue_id'], unique=False)

    op.create_table('messages',
    sa.Column('queue_id', sa.String(length=32), nullable=False),
    sa.Column('sender', sa.String(length=512), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('client_name', sa.String(length=255), nullable=False),
    sa.Column('client_addr', sa.String(length=64), nullable=False),
    sa.Column('helo', sa.String(length=255), nullable=False),
    sa.Column('protocol', sa.String(length=16), nullable=False),
    sa.Column('sasl_username', sa.String(length=255), nullable=False),
    sa.Column('trace_id', sa.String(length=64), nullable=False),
    sa.Column('content_filter', sa.String(length=255), nullable=False),
    sa.Column('ret', sa.String(length=8), nullable=False),
    sa.Column('envid', sa.String(length=255), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('arrived_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('queue_id')
    )
    op.create_table('recipients',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('queue_id', sa.String(length=32), nullable=False),
    sa.Column('address', sa.String(length=512), nullable=False),
    sa.Column('orig_rcpt', sa.String(length=512), nullable=False),
    sa.Column('orcpt', sa.String(length=512), nullable=False),
    sa.Column('notify', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('transport', sa.String(length=64), nullable=False),
    sa.Column('nexthop', sa.String(length=255), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dsn_status', sa.String(length=16), nullable=False),
    sa.Column('last_reply', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['queue_id'], ['messages.queue_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.create_index('ix_recipients_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_recipients_queue_id', ['queue_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.drop_index('ix_recipients_queue_id')
        batch_op.drop_index('ix_recipients_due')

    op.drop_table('recipients')
    op.drop_table('messages')
    with op.batch_alter_table('delivery_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_log_queue_id'))

    op.drop_table('delivery_log')
