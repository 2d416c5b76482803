"""confusion_matrices: test_predictions and test_labels (paired tests over test samples)

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-01
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0008'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('confusion_matrices') as batch_op:
        batch_op.add_column(sa.Column('test_predictions', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('test_labels', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('confusion_matrices') as batch_op:
        batch_op.drop_column('test_labels')
        batch_op.drop_column('test_predictions')
