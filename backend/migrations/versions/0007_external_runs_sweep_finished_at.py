"""runs.external (runs trained elsewhere, logged through the API); sweeps.finished_at (when
its last run finished: the sweep-finished notification is sent once)

Revision ID: 0007
Revises: 0008
Create Date: 2026-12-01
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0007'
down_revision: Union[str, None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# SQLite rebuilds the runs table to add a column: it must keep AUTOINCREMENT (run ids never
# reused, migration 0006), which the rebuilt table would otherwise lose.
RUNS_TABLE = {'table_kwargs': {'sqlite_autoincrement': True}}


def upgrade() -> None:
    with op.batch_alter_table('runs', **RUNS_TABLE) as batch_op:
        batch_op.add_column(sa.Column('external', sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table('sweeps') as batch_op:
        batch_op.add_column(sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sweeps') as batch_op:
        batch_op.drop_column('finished_at')
    with op.batch_alter_table('runs', **RUNS_TABLE) as batch_op:
        batch_op.drop_column('external')
