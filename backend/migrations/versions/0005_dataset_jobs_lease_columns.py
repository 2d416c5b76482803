"""dataset_jobs: worker_losses and awaiting_broker_since (the lease life cycle runs have)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('dataset_jobs') as batch_op:
        batch_op.add_column(sa.Column('worker_losses', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('awaiting_broker_since', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('dataset_jobs') as batch_op:
        batch_op.drop_column('awaiting_broker_since')
        batch_op.drop_column('worker_losses')
