"""workers and their slots (the workers page), runs.needs_own_slot, system_metric_points

Revision ID: 000a
Revises: 0007
Create Date: 2026-12-01
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '000a'
down_revision: Union[str, None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'workers',
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('slots', sa.Integer(), nullable=False),
        sa.Column('threads_per_run', sa.Integer(), nullable=False),
        sa.Column('gpu', sa.String(length=255), nullable=True),
        sa.Column('gpu_name', sa.String(length=255), nullable=True),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    op.create_index('ix_workers_heartbeat_at', 'workers', ['heartbeat_at'])
    op.create_table(
        'worker_slots',
        sa.Column('worker', sa.String(length=255), nullable=False),
        sa.Column('slot', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=True),
        sa.Column('run_id', sa.Integer(), nullable=True),
        sa.Column('since', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['worker'], ['workers.name'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('worker', 'slot'),
    )
    op.create_table(
        'system_metric_points',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('epoch', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('value', sa.Float(), nullable=False),
        sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('run_id', 'epoch', 'name', name='uq_system_metric_points_run_epoch_name'),
    )
    op.create_index('ix_system_metric_points_run_id_id', 'system_metric_points', ['run_id', 'id'])
    with op.batch_alter_table('runs') as batch_op:
        batch_op.add_column(sa.Column('needs_own_slot', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('runs') as batch_op:
        batch_op.drop_column('needs_own_slot')
    op.drop_index('ix_system_metric_points_run_id_id', table_name='system_metric_points')
    op.drop_table('system_metric_points')
    op.drop_table('worker_slots')
    op.drop_index('ix_workers_heartbeat_at', table_name='workers')
    op.drop_table('workers')
