"""metric_points.step (per-step points, in the unique key) and runs.progress

Revision ID: 000b
Revises: 000a
Create Date: 2026-12-01
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '000b'
down_revision: Union[str, None] = '000a'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


# SQLite rebuilds the runs table to add a column: it must keep AUTOINCREMENT (run ids never
# reused, migration 0006), which the rebuilt table would otherwise lose.
RUNS_TABLE = {'table_kwargs': {'sqlite_autoincrement': True}}


def _backfill_steps() -> None:
    """Points written before steps existed are per-epoch points: their step is the global step at
    the end of their epoch, epoch × the run's steps per epoch (recorded in run.info). Imputer
    points come before the classifier's first step and stay at 0."""
    connection = op.get_bind()
    runs = sa.table('runs', sa.column('id', sa.Integer), sa.column('info', sa.JSON))
    points = sa.table('metric_points', sa.column('run_id', sa.Integer), sa.column('epoch', sa.Integer),
                      sa.column('step', sa.Integer), sa.column('name', sa.String))
    for run_id, info in connection.execute(sa.select(runs.c.id, runs.c.info)).all():
        steps = (info or {}).get('steps_per_epoch') if isinstance(info, dict) else None
        if isinstance(steps, int) and steps > 0:
            connection.execute(points.update().where(points.c.run_id == run_id, ~points.c.name.startswith('imputer_'))
                               .values(step=points.c.epoch * steps))


def upgrade() -> None:
    with op.batch_alter_table('metric_points') as batch_op:
        batch_op.add_column(sa.Column('step', sa.Integer(), server_default='0', nullable=False))
        batch_op.drop_constraint('uq_metric_points_run_epoch_name', type_='unique')
    _backfill_steps()
    with op.batch_alter_table('metric_points') as batch_op:
        batch_op.create_unique_constraint('uq_metric_points_run_epoch_step_name', ['run_id', 'epoch', 'step', 'name'])
    with op.batch_alter_table('runs', **RUNS_TABLE) as batch_op:
        batch_op.add_column(sa.Column('progress', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs', **RUNS_TABLE) as batch_op:
        batch_op.drop_column('progress')
    # Per-step points have no place in the older key (one point per run, epoch and name).
    op.execute("DELETE FROM metric_points WHERE name LIKE 'step/%'")
    with op.batch_alter_table('metric_points') as batch_op:
        batch_op.drop_constraint('uq_metric_points_run_epoch_step_name', type_='unique')
        batch_op.create_unique_constraint('uq_metric_points_run_epoch_name', ['run_id', 'epoch', 'name'])
        batch_op.drop_column('step')
