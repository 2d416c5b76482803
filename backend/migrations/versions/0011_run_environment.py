"""runs.environment: the reproducibility record of a run (missmod version and git commit, Python,
torch, CUDA, cuDNN, device, threads, host, method plugin); NULL for runs made before it was kept
("not recorded")

Revision ID: 0011
Revises: 0014
Create Date: 2026-12-07
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0011'
down_revision: Union[str, None] = '0014'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# SQLite rebuilds the runs table to add a column: it must keep AUTOINCREMENT (migration 0006).
RUNS_TABLE = {'table_kwargs': {'sqlite_autoincrement': True}}


def upgrade() -> None:
    with op.batch_alter_table('runs', **RUNS_TABLE) as batch_op:
        batch_op.add_column(sa.Column('environment', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs', **RUNS_TABLE) as batch_op:
        batch_op.drop_column('environment')
