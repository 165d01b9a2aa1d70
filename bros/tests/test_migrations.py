"""The migrations: the suite's database is built by them (no `--no-migrations`), and they match the models."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def test_migrations_match_the_models(db):
    """A model change without its migration fails here (`makemigrations --check`)."""
    output = StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=output, stderr=output)
    except SystemExit:
        pytest.fail(f"Models changed without a migration:\n{output.getvalue()}")


def test_migrations_built_the_test_database(db):
    """The test database is at the head of every app's migrations: the suite ran them, not syncdb."""
    executor = MigrationExecutor(connection)
    assert executor.migration_plan(executor.loader.graph.leaf_nodes()) == []
    applied = executor.loader.applied_migrations
    assert ("deliveries", "0001_initial") in applied and ("riders", "0002_rider_changed_by") in applied
