"""Database side of running jobs, one module per room:

- `lease`: the lineage lease (one worker per model's jobs, in order; turns yielded fairly);
- `build`: the next job (`JobSpec`): an evaluation, a resumed job, or queued requests merged;
- `progress`: progress and events of a running job (the heartbeat);
- `outcome`: the version published with the requests' outcome, or the job failed/cancelled;
- `recovery`: the stranded-lineage sweep and the reaper of silent jobs;
- `readers`: the API's tenant-scoped reads of jobs and events;
- `common`: what they share (bounds, progress constants, the write transaction, events).

Every function that takes the database URL runs its own short transaction, so a long
unlearning run never holds one open. No torch here: the worker calls these. The names below
are the domain's public surface (`from registry import jobs; jobs.next_job(...)`).
"""

from .build import JobSpec, next_job
from .common import (
    DONE_PROGRESS,
    MAX_ATTEMPTS,
    MAX_MERGE,
    QUEUED_PROGRESS,
    JobError,
    jsonable,
    write_tx,
)
from .lease import has_queued, release_lease, renew_lease, take_lease, yield_turn
from .outcome import (
    PublishOutcome,
    cancel_job,
    fail_job,
    next_version_number,
    publish_version,
    version_of_job,
)
from .progress import ProgressAck, add_event, report_progress
from .readers import get_job, job_events_query, jobs_query
from .recovery import reap_silent_jobs, stranded_lineages, sweep_stranded

__all__ = [
    "DONE_PROGRESS", "MAX_ATTEMPTS", "MAX_MERGE", "QUEUED_PROGRESS", "JobError", "JobSpec",
    "ProgressAck", "PublishOutcome", "add_event", "cancel_job", "fail_job", "get_job",
    "has_queued", "job_events_query", "jobs_query", "jsonable", "next_job",
    "next_version_number", "publish_version", "reap_silent_jobs", "release_lease",
    "renew_lease", "report_progress", "stranded_lineages", "sweep_stranded", "take_lease",
    "version_of_job", "write_tx", "yield_turn",
]
