"""Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from backend.db import Base, make_engine
from backend.migrate import alembic_config, pending_migrations, upgrade
from backend.jobs import models as job_models  # noqa: F401
from backend.runs import models  # noqa: F401


def assert_schema_matches_models(url: str) -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], differences
    tables = set(inspect(engine).get_table_names())
    assert {"runs", "metric_points", "confusion_matrices", "dataset_jobs", "alembic_version"} <= tables
    engine.dispose()


def check_round_trip(url: str) -> None:
    upgrade(url)
    current, head = pending_migrations(url)
    assert current == head is not None
    assert_schema_matches_models(url)
    command.downgrade(alembic_config(url), "base")
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()
    upgrade(url)
    assert_schema_matches_models(url)


def test_sqlite_migrations(tmp_path):
    check_round_trip(f"sqlite:///{tmp_path / 'm.db'}")


def test_postgresql_migrations(postgres_url):
    check_round_trip(postgres_url)
