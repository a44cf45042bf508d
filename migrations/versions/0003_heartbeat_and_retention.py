"""job heartbeat and forget-data retention

`jobs.heartbeat_at`: the last sign of life of the worker running a job; the dispatcher's
sweep requeues a running job without one for ALKN_JOB_HEARTBEAT_TIMEOUT.
`forget_requests.item_hashes` / `items_purged_at`: ALKN_FORGET_DATA_RETENTION after a request
finished, its items are replaced by their sha256 hashes; a partial index finds the requests
still holding items.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_NOT_PURGED = sa.text("items_purged_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('forget_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('item_hashes', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('items_purged_at', sa.DateTime(timezone=True),
                                      nullable=True))
    op.create_index('ix_requests_purge', 'forget_requests', ['finished_at'], unique=False,
                    postgresql_where=_NOT_PURGED, sqlite_where=_NOT_PURGED)


def downgrade() -> None:
    op.drop_index('ix_requests_purge', table_name='forget_requests')
    with op.batch_alter_table('forget_requests', schema=None) as batch_op:
        batch_op.drop_column('items_purged_at')
        batch_op.drop_column('item_hashes')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
