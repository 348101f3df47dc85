"""Thin data access: functions that read and change fleet tables.

They return None for "not found", raise :mod:`fleet.errors` domain errors for conflicts
and bad references, record an audit event for every change, and never commit (the
caller owns the transaction). Routes and dashboard pages call the same functions.
"""
