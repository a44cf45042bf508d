"""evaluation on fixed samples, measured once per version

`models.eval_max_items` / `models.eval_detail_items`: the sample sizes of the model's evaluation
(null: the service's defaults, 200 and 50). `versions.item_scores`: the per-item scores of the
version's last evaluation (alkn_core.eval_sets.ItemScores), so the next job's "before" reads
them instead of measuring the same items again. `jobs.kind`: "unlearn" or "evaluate" (a full
evaluation of a version on demand, which makes no version).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('eval_max_items', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('eval_detail_items', sa.Integer(), nullable=True))
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('item_scores', sa.JSON(), nullable=True))
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(16), nullable=False,
                                      server_default='unlearn'))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('kind')
    with op.batch_alter_table('versions', schema=None) as batch_op:
        batch_op.drop_column('item_scores')
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_column('eval_detail_items')
        batch_op.drop_column('eval_max_items')
