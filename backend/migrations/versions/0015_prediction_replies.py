"""workers' answers to prediction requests (backend/runs/models.py: PredictionReply)

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
    op.create_table('prediction_replies',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_prediction_replies_run_id'), 'prediction_replies', ['run_id'], unique=False)
    op.create_index(op.f('ix_prediction_replies_created_at'), 'prediction_replies', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_prediction_replies_created_at'), table_name='prediction_replies')
    op.drop_index(op.f('ix_prediction_replies_run_id'), table_name='prediction_replies')
    op.drop_table('prediction_replies')
