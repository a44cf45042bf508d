"""job event numbers per job

`job_events.seq`: an event's number within its job (1, 2, 3, ...), the `id` the API shows
and the key its event pages are ordered by; the table's own `id` (one sequence for every
tenant's jobs, which told a tenant how busy the service is) is no longer shown. Existing
events are numbered in the order the API showed them (`at`, then `id`).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seq', sa.Integer(), nullable=True))
    op.execute("""
        UPDATE job_events SET seq = (
            SELECT count(*) FROM job_events AS e
            WHERE e.job_id = job_events.job_id
              AND (e.at < job_events.at OR (e.at = job_events.at AND e.id <= job_events.id)))""")
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.alter_column('seq', existing_type=sa.Integer(), nullable=False)
        batch_op.create_index('ix_job_events_job_seq', ['job_id', 'seq'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.drop_index('ix_job_events_job_seq')
        batch_op.drop_column('seq')
