"""the GPU memory a model's jobs need

`models.min_gpu_memory_gb`: the dispatcher sends the model's jobs to the smallest worker queue
whose GPUs have at least this much (ALKN_QUEUE_ROUTES); null: the default queue.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('min_gpu_memory_gb', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_column('min_gpu_memory_gb')
