"""the quality gate's verdict on versions and jobs

`versions.quality` / `jobs.quality`: the `quality` block a job computes after its "after"
evaluation (utility floor, measured ratios against the lineage's first version, whether the
forget target was met, `passed`); null for root versions and for jobs that made no version.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('versions', 'jobs'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('quality', sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in ('jobs', 'versions'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('quality')
