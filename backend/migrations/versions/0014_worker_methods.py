"""the methods each worker can train, and why it cannot train the others; why a queued run waits
(method plugins, docs/methods.md)

Revision ID: 0014
Revises: 000d
Create Date: 2026-12-07
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0014'
down_revision: Union[str, None] = '000d'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Why a queued run waits: "no worker can train `X`" (set by the API, cleared once one can).
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('waiting_for_worker', sa.String(length=1000), nullable=True))
    # Null on a worker registered before this: it trains the six built-in methods.
    with op.batch_alter_table('workers') as batch:
        batch.add_column(sa.Column('methods', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('method_errors', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('waiting_for_worker')
    with op.batch_alter_table('workers') as batch:
        batch.drop_column('method_errors')
        batch.drop_column('methods')
