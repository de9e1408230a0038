"""Fleet: leases looked up by owner, destination slots and pacing.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.create_index('ix_recipients_lease_owner', ['lease_owner'], unique=False)
    op.create_table('destination_slots',
    sa.Column('job_id', sa.String(length=160), nullable=False),
    sa.Column('destination', sa.String(length=320), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('job_id')
    )
    with op.batch_alter_table('destination_slots', schema=None) as batch_op:
        batch_op.create_index('ix_destination_slots_destination', ['destination', 'expires_at'],
                              unique=False)
        batch_op.create_index('ix_destination_slots_owner', ['owner'], unique=False)
    op.create_table('destination_pacing',
    sa.Column('destination', sa.String(length=320), nullable=False),
    sa.Column('next_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('destination')
    )


def downgrade() -> None:
    op.drop_table('destination_pacing')
    with op.batch_alter_table('destination_slots', schema=None) as batch_op:
        batch_op.drop_index('ix_destination_slots_owner')
        batch_op.drop_index('ix_destination_slots_destination')
    op.drop_table('destination_slots')
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.drop_index('ix_recipients_lease_owner')
