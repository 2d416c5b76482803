"""Apply the database migrations: `python -m backend.migrate` (what `make migrate` runs)."""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .db import engine_for
from .settings import get_settings

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "backend" / "migrations"))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


def pending_migrations(database_url: str) -> tuple[str | None, str]:
    """(current revision of the database, head revision of the code)."""
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    with engine_for(database_url).connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current, head


def main() -> int:
    settings = get_settings()
    upgrade(settings.database_url)
    current, head = pending_migrations(settings.database_url)
    print(f"database {settings.database_url.split('@')[-1]} at revision {current} (head {head})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
