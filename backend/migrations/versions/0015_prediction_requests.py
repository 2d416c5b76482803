"""prediction requests and the workers' answers (backend/runs/models.py: PredictionRequest)

Revision ID: 0015
Revises: 0011
Create Date: 2026-12-07
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0015'
down_revision: Union[str, None] = '0011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('prediction_requests',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('inputs', sa.Text(), nullable=False),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('body', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_prediction_requests_run_id'), 'prediction_requests', ['run_id'], unique=False)
    op.create_index(op.f('ix_prediction_requests_created_at'), 'prediction_requests', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_prediction_requests_created_at'), table_name='prediction_requests')
    op.drop_index(op.f('ix_prediction_requests_run_id'), table_name='prediction_requests')
    op.drop_table('prediction_requests')
