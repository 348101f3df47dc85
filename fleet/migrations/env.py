"""Alembic environment: always runs on a connection handed over by :mod:`fleet.migrate`."""

from __future__ import annotations

from alembic import context

from fleet.models import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "fleet migrations run through fleet.migrate (for example `fedfleet fleet migrate`), "
        "not the alembic command line"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite cannot ALTER constraints; batch mode rebuilds the table
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
