"""The model registry: settings, database, ORM models, artifact store and operations.

Imported by `api` and `worker`; imports nothing of theirs (and never torch)."""
