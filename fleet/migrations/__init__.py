"""Alembic migrations of the fleet database (run by :mod:`fleet.migrate`)."""
