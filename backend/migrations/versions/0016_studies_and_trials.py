"""hyperparameter studies and their trials (backend/studies/models.py)

Revision ID: 0016
Revises: 000c
Create Date: 2026-12-02
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0016'
down_revision: Union[str, None] = '000c'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dataset', sa.String(length=200), nullable=False),
    sa.Column('base_spec', sa.JSON(), nullable=False),
    sa.Column('candidates', sa.JSON(), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('trials_per_arm', sa.Integer(), nullable=False),
    sa.Column('sampler', sa.JSON(), nullable=False),
    sa.Column('pruner', sa.JSON(), nullable=False),
    sa.Column('parallel_trials', sa.Integer(), nullable=False),
    sa.Column('trial_seed', sa.Integer(), nullable=False),
    sa.Column('final_seeds', sa.Integer(), nullable=False),
    sa.Column('final_sweep_id', sa.Integer(), nullable=True),
    sa.Column('final_runs', sa.JSON(), nullable=True),
    sa.Column('preset', sa.String(length=50), nullable=True),
    sa.Column('preset_options', sa.JSON(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('version', sa.Integer(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['final_sweep_id'], ['sweeps.id'], name='fk_studies_final_sweep_id_sweeps',
                            ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key', name='uq_studies_idempotency_key')
    )
    op.create_index(op.f('ix_studies_state'), 'studies', ['state'], unique=False)
    op.create_table('study_trials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('arm', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('intermediate', sa.JSON(), nullable=False),
    sa.Column('system_attrs', sa.JSON(), nullable=False),
    sa.Column('pruned_epoch', sa.Integer(), nullable=True),
    sa.Column('overhead_seconds', sa.Float(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', name='uq_study_trials_run_id'),
    sa.UniqueConstraint('study_id', 'arm', 'number', name='uq_study_trials_study_arm_number')
    )
    op.create_index(op.f('ix_study_trials_study_id'), 'study_trials', ['study_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_study_trials_study_id'), table_name='study_trials')
    op.drop_table('study_trials')
    op.drop_index(op.f('ix_studies_state'), table_name='studies')
    op.drop_table('studies')
