"""dataset jobs (preprocessing raw video datasets, feature extraction)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('dataset_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('dataset', sa.String(length=200), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker', sa.String(length=255), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('error_detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('dataset_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_jobs_dataset'), ['dataset'], unique=False)
        batch_op.create_index(batch_op.f('ix_dataset_jobs_state'), ['state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('dataset_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dataset_jobs_state'))
        batch_op.drop_index(batch_op.f('ix_dataset_jobs_dataset'))

    op.drop_table('dataset_jobs')
