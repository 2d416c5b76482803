"""run ids never reused (SQLite AUTOINCREMENT); server-side browser sessions (sign-out ends one)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _runs_autoincrement(enabled: bool) -> None:
    # SQLite's plain INTEGER PRIMARY KEY hands a deleted newest run's id to the next run (a
    # script or a link holding that id would then see another run); AUTOINCREMENT never does.
    # PostgreSQL's sequences never reuse an id: nothing to do there.
    if op.get_bind().dialect.name != 'sqlite':
        return
    with op.batch_alter_table('runs', recreate='always', table_kwargs={'sqlite_autoincrement': enabled}):
        pass


def upgrade() -> None:
    _runs_autoincrement(True)
    op.create_table('browser_sessions',
    sa.Column('id_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id_hash')
    )
    op.create_index(op.f('ix_browser_sessions_expires_at'), 'browser_sessions', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_browser_sessions_expires_at'), table_name='browser_sessions')
    op.drop_table('browser_sessions')
    _runs_autoincrement(False)
