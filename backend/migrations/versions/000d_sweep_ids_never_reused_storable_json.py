"""sweep ids never reused (SQLite AUTOINCREMENT); JSON stored by clients made storable (no NUL,
no lone surrogate)

Revision ID: 000d
Revises: 0016
Create Date: 2026-12-02
"""
import json
import re
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '000d'
down_revision: Union[str, None] = '0016'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# JSON columns a client's input reached, by table: (primary key, columns).
CLIENT_JSON = {
    'runs': ('id', ('spec', 'info', 'progress')),
    'confusion_matrices': ('run_id', ('classes',)),
    'sweeps': ('id', ('grid', 'preset_options')),
    'dataset_jobs': ('id', ('params', 'result')),
    'registered_datasets': ('id', ('info',)),
}
UNSTORABLE = re.compile('[\x00\ud800-\udfff]')  # after json.loads, a valid surrogate pair is one character


def _cleaned(value):
    if isinstance(value, str):
        return UNSTORABLE.sub('\ufffd', value)
    if isinstance(value, dict):
        return {_cleaned(key): _cleaned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    return value


def _clean_client_json() -> None:
    """Before this revision an external run's free-form settings could hold "\\u0000" or a lone
    surrogate. PostgreSQL keeps them in a json column but fails every query that reads a field of
    such a document (one run broke every spec-field filter of the runs list), and no response can
    carry a lone surrogate. Each becomes U+FFFD (the replacement character); the rest is kept."""
    bind = op.get_bind()
    postgres = bind.dialect.name == 'postgresql'
    for table, (key, columns) in CLIENT_JSON.items():
        for column in columns:
            # Only rows whose JSON text holds an escape that may be one (the escapes of valid
            # non-ASCII characters match too; they are left as they are below).
            as_text = f'lower(CAST({column} AS TEXT))' if postgres else f'lower({column})'
            find = 'strpos' if postgres else 'instr'
            rows = bind.execute(sa.text(
                f'SELECT {key}, CAST({column} AS TEXT) FROM {table} '
                f'WHERE {find}({as_text}, :surrogate) > 0 OR {find}({as_text}, :nul) > 0'),
                {'surrogate': '\\ud', 'nul': '\\u0000'}).all()
            for row_id, stored in rows:
                value = json.loads(stored)
                cleaned = _cleaned(value)
                if cleaned != value:
                    new = 'CAST(:value AS JSON)' if postgres else ':value'
                    bind.execute(sa.text(f'UPDATE {table} SET {column} = {new} WHERE {key} = :id'),
                                 {'value': json.dumps(cleaned), 'id': row_id})


def _sweeps_autoincrement(enabled: bool) -> None:
    # As runs' ids (0006): SQLite's plain INTEGER PRIMARY KEY hands a deleted newest sweep's id
    # to the next sweep; AUTOINCREMENT never does. PostgreSQL's sequences never reuse an id.
    # Later migrations that rebuild the sweeps table on SQLite must keep it (table_kwargs).
    if op.get_bind().dialect.name != 'sqlite':
        return
    with op.batch_alter_table('sweeps', recreate='always', table_kwargs={'sqlite_autoincrement': enabled}):
        pass


def upgrade() -> None:
    _sweeps_autoincrement(True)
    _clean_client_json()


def downgrade() -> None:
    # The cleaned values stay cleaned: nothing restores a NUL.
    _sweeps_autoincrement(False)
