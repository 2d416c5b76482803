"""many hosts: registered feature datasets, Idempotency-Key of runs and sweeps, the broker error
of runs and dataset jobs (awaiting the broker), the attempt a retried run starts over after

Revision ID: 000c
Revises: 000a
Create Date: 2026-12-01
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '000c'
down_revision: Union[str, None] = '000b'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_RUNS = {'sqlite_autoincrement': True}


def upgrade() -> None:
    op.create_table('registered_datasets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('key', sa.String(length=500), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('info', sa.JSON(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    with op.batch_alter_table('dataset_jobs') as batch_op:
        batch_op.add_column(sa.Column('broker_error', sa.Text(), nullable=True))
    # SQLite rebuilds the table for the constraint: keep its AUTOINCREMENT (0006).
    with op.batch_alter_table('runs', table_kwargs=_RUNS) as batch_op:
        batch_op.add_column(sa.Column('broker_error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('resume_after_attempt', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_unique_constraint('uq_runs_idempotency_key', ['idempotency_key'])
    with op.batch_alter_table('sweeps') as batch_op:
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint('uq_sweeps_idempotency_key', ['idempotency_key'])


def downgrade() -> None:
    with op.batch_alter_table('sweeps') as batch_op:
        batch_op.drop_constraint('uq_sweeps_idempotency_key', type_='unique')
        batch_op.drop_column('idempotency_key')
    with op.batch_alter_table('runs', table_kwargs=_RUNS) as batch_op:
        batch_op.drop_constraint('uq_runs_idempotency_key', type_='unique')
        batch_op.drop_column('resume_after_attempt')
        batch_op.drop_column('idempotency_key')
        batch_op.drop_column('broker_error')
    with op.batch_alter_table('dataset_jobs') as batch_op:
        batch_op.drop_column('broker_error')
    op.drop_table('registered_datasets')
