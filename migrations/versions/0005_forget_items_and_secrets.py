"""forget items in a table of their own, per-tenant source roots, the hash secret

`forget_items` (request_id, items): a request's items move out of `forget_requests.items`,
so that the retention purge can delete them and rewrite that table (VACUUM FULL on
PostgreSQL; registry/erasure.py). Requests already purged get no row. Dropping the column
leaves the old items (and those purged before) in forget_requests' files: VACUUM cannot run
in the migration's transaction, so `registry.migrate.upgrade` rewrites the database once
after this migration (PostgreSQL: VACUUM FULL forget_requests; SQLite: VACUUM). Run that
by hand after an `alembic upgrade` that bypasses it.

`tenants.source_roots`: directories a tenant may register models from (NULL: the global
ALKN_MODEL_SOURCE_ROOTS).

`deployment_secrets`: one row `hash`, a random secret that keys the HMACs of purged items
and idempotent request bodies when ALKN_HASH_SECRET is unset. Hashes written before this
migration stay plain sha256 (their text is gone; they cannot be converted); an
Idempotency-Key retried across the upgrade answers 409 (its stored hash was sha256).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("PRAGMA secure_delete=ON")  # the dropped copy is zeroed as it is freed
    op.create_table(
        'forget_items',
        sa.Column('request_id', sa.String(length=36), nullable=False),
        sa.Column('items', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['request_id'], ['forget_requests.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('request_id'))
    op.execute("INSERT INTO forget_items (request_id, items) SELECT id, items "
                "FROM forget_requests WHERE items_purged_at IS NULL")
    with op.batch_alter_table('forget_requests', schema=None) as batch_op:
        batch_op.drop_column('items')
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_roots', sa.JSON(), nullable=True))
    secrets_table = op.create_table(
        'deployment_secrets',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('value', sa.String(length=128), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'))
    op.bulk_insert(secrets_table, [{"name": "hash", "value": secrets.token_hex(32),
                                    "created_at": datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table('deployment_secrets')
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('source_roots')
    with op.batch_alter_table('forget_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('items', sa.JSON(), nullable=True))
    op.execute("UPDATE forget_requests SET items = (SELECT items FROM forget_items "
               "WHERE forget_items.request_id = forget_requests.id)")
    op.execute("UPDATE forget_requests SET items = '[]' WHERE items IS NULL")
    with op.batch_alter_table('forget_requests', schema=None) as batch_op:
        batch_op.alter_column('items', existing_type=sa.JSON(), nullable=False)
    op.drop_table('forget_items')
