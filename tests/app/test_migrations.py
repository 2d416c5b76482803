"""Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from backend.db import make_engine
from backend.migrate import alembic_config, pending_migrations, upgrade
from backend.models import metadata


def assert_schema_matches_models(url: str) -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == [], differences
    tables = set(inspect(engine).get_table_names())
    assert {"runs", "metric_points", "confusion_matrices", "sweeps", "run_tags", "dataset_jobs",
            "workers", "worker_slots", "system_metric_points", "alembic_version"} <= tables
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


@pytest.mark.services
def test_postgresql_migrations(postgres_url):
    check_round_trip(postgres_url)


def check_upgrade_keeps_data(url: str) -> None:
    """Upgrading a database that holds runs keeps every run, point and matrix (on SQLite a
    table rebuilt by batch mode must not cascade-delete the rows that refer to it)."""
    command.upgrade(alembic_config(url), "0001")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO runs (id, name, spec, dataset, method, fusion, missing_modality, missing_rate, seed, state, "
            "created_at, attempts, cancel_requested, epochs_completed) VALUES (1, 'r', '{}', 'digits', 'mle', 'add', "
            "'bottom', 0.9, 0, 'succeeded', '2026-01-01 00:00:00+00:00', 1, false, 2)"))
        connection.execute(text("INSERT INTO metric_points (run_id, epoch, name, value, recorded_at) VALUES "
                                "(1, 1, 'val_accuracy', 0.5, '2026-01-01 00:00:00+00:00'), "
                                "(1, 2, 'val_accuracy', 0.6, '2026-01-01 00:00:00+00:00')"))
        connection.execute(text("INSERT INTO confusion_matrices (run_id, epoch, classes, counts) "
                                "VALUES (1, 2, '[\"a\"]', '[[1]]')"))
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM metric_points")).scalar() == 2
        assert connection.execute(text("SELECT count(*) FROM confusion_matrices")).scalar() == 1
        assert connection.execute(text("SELECT sweep_id, note FROM runs")).one() == (None, None)
    engine.dispose()


def test_sqlite_upgrade_keeps_data(tmp_path):
    check_upgrade_keeps_data(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.services
def test_postgresql_upgrade_keeps_data(postgres_url):
    check_upgrade_keeps_data(postgres_url)


def check_client_json_is_made_storable(url: str) -> None:
    """An older server stored an external run's settings with "\\u0000" and lone surrogates:
    PostgreSQL kept them in a json column and then failed every query on a spec field. 000d
    replaces each with U+FFFD and keeps the rest (valid non-ASCII characters included)."""
    command.upgrade(alembic_config(url), "000c")
    engine = make_engine(url)
    spec = '{"lr": 0.1, "note": "a\\u0000b", "\\udcffkey": "\\ud800", "fine": "\\u00e9t\\u00e9 \\ud83d\\ude00"}'
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO runs (id, name, spec, dataset, method, fusion, missing_modality, missing_rate, seed, state, "
            "created_at, attempts, cancel_requested, epochs_completed, info) VALUES (1, 'r', :spec, 'digits', 'x', "
            "'add', 'bottom', 0.9, 0, 'succeeded', '2026-01-01 00:00:00+00:00', 1, false, 2, :info)"),
            {"spec": spec, "info": '{"source": "\\udfff"}'})
        connection.execute(text("INSERT INTO confusion_matrices (run_id, epoch, classes, counts) "
                                "VALUES (1, 2, :classes, '[[1]]')"), {"classes": '["a\\u0000"]'})
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        stored, info = connection.execute(text("SELECT CAST(spec AS TEXT), CAST(info AS TEXT) FROM runs")).one()
        assert json.loads(stored) == {"lr": 0.1, "note": "a\ufffdb", "\ufffdkey": "\ufffd", "fine": "été \U0001F600"}
        assert json.loads(info) == {"source": "\ufffd"}
        classes = connection.execute(text("SELECT CAST(classes AS TEXT) FROM confusion_matrices")).scalar()
        assert json.loads(classes) == ["a\ufffd"]
        if engine.dialect.name == "postgresql":  # a field of the document can be read again
            assert connection.execute(text("SELECT spec ->> 'note' FROM runs")).scalar() == "a\ufffdb"
    engine.dispose()


def test_sqlite_client_json_is_made_storable(tmp_path):
    check_client_json_is_made_storable(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.services
def test_postgresql_client_json_is_made_storable(postgres_url):
    check_client_json_is_made_storable(postgres_url)
