"""sweeps, run tags and notes

Sweeps group runs (runs.sweep_id, deleted with their sweep); tags live in their own table so
filtering by tag is an index lookup; test_accuracy is indexed for sorting the runs list.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('sweeps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('grid', sa.JSON(), nullable=False),
    sa.Column('preset', sa.String(length=50), nullable=True),
    sa.Column('preset_options', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('run_tags',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('tag', sa.String(length=50), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'tag')
    )
    with op.batch_alter_table('run_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_tags_tag'), ['tag'], unique=False)

    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sweep_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('note', sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f('ix_runs_sweep_id'), ['sweep_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_test_accuracy'), ['test_accuracy'], unique=False)
        batch_op.create_foreign_key('fk_runs_sweep_id_sweeps', 'sweeps', ['sweep_id'], ['id'], ondelete='CASCADE')



def downgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_constraint('fk_runs_sweep_id_sweeps', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_runs_test_accuracy'))
        batch_op.drop_index(batch_op.f('ix_runs_sweep_id'))
        batch_op.drop_column('note')
        batch_op.drop_column('sweep_id')

    with op.batch_alter_table('run_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_tags_tag'))

    op.drop_table('run_tags')
    op.drop_table('sweeps')
