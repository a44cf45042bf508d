"""change notifications: forget requests and API keys announce their changes

Every UPDATE or DELETE of a forget request or an API key sends a PostgreSQL NOTIFY on
channel `alkn_changes` (payload `r:<request id>` or `k:<key hash>`), delivered at commit.
API processes listen and drop what they cached for that row (see registry/change_feed.py),
so cached status reads and key lookups are never staler than the notification's delivery.
A trigger rather than application code: every writer (API, worker, reaper, a DBA's
UPDATE) is covered. SQLite has no NOTIFY; there the API caches nothing.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_TRIGGERS = {  # table: payload expression
    "forget_requests": "'r:' || OLD.id",
    "api_keys": "'k:' || OLD.key_hash",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, payload in _TRIGGERS.items():
        op.execute(f"""
            CREATE FUNCTION alkn_notify_{table}() RETURNS trigger AS $$
            BEGIN
                PERFORM pg_notify('alkn_changes', {payload});
                RETURN NULL;
            END $$ LANGUAGE plpgsql""")
        op.execute(f"""
            CREATE TRIGGER alkn_notify_{table} AFTER UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION alkn_notify_{table}()""")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS alkn_notify_{table} ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS alkn_notify_{table}()")
