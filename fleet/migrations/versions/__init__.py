"""Migration revisions, oldest first: 0001_core, 0002_runs_sessions."""
