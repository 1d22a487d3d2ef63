"""The job layer, torch-free: the store (SQLAlchemy tables, migrations, repository functions),
settings, and the executors' plumbing (enqueue, claim, heartbeats). ``app`` (REST + dashboard) and
``workers`` (runs jobs) both build on it and never on each other (docs/architecture.md)."""
