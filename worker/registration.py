"""A registration job (`kind` "register", registry/registrations.py): the source directory
copied into a staging directory file by file (progress: megabytes copied), checked as a
version's model files are (no links, no remote code, file names inside it), then published
and hashed under a fresh key, and recorded as the model's root version."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

from config.settings import Settings
from registry.jobs import JobSpec
from registry.model_files import check_model_dir
from registry.registrations import SOURCE, finish_registration
from registry.store import regular_files

from .job_control import ProgressReporter
from .version_files import Store, drop_files, staging_dir

log = logging.getLogger(__name__)

# The progress bar of a registration: the copy, then publishing (hashing, moving).
REGISTRATION_SPANS: dict[str, tuple[float, float]] = {
    "queued": (0.0, 0.0), "copying": (0.0, 0.85), "saving": (0.85, 1.0), "done": (1.0, 1.0)}
MB = 1 << 20


class RegistrationJob:
    """One registration, run to its end; `key` is set once files are published (the caller
    deletes them if the job ends without a version)."""

    def __init__(self, settings: Settings, store: Store, spec: JobSpec,
                 report: ProgressReporter) -> None:
        self.settings, self.store, self.spec, self.report = settings, store, spec, report
        self.key: str | None = None

    def run(self) -> str:
        spec, report = self.spec, self.report
        report.spans = dict(REGISTRATION_SPANS)
        src = Path(spec.params[SOURCE])
        if not src.is_dir():
            raise ValueError("the source directory is no longer there")
        files = list(regular_files(src))  # ValueError for a link or a special file
        if len(files) > self.settings.max_version_files:
            raise ValueError(f"a version may hold at most {self.settings.max_version_files} "
                             "files")
        sizes = [f.stat().st_size for f in files]
        total = sum(sizes)
        staging = staging_dir(self.store)
        try:
            copied = 0
            report("copying", 0, max(1, total // MB))
            for f, size in zip(files, sizes, strict=True):
                dest = staging / f.relative_to(src)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
                copied += size
                report("copying", copied // MB, max(1, total // MB))
            check_model_dir(staging)  # InvalidModelFiles: what is wrong, within the version
            report.begin("saving")
            self.key = f"{spec.model_id}/v1-{uuid.uuid4().hex[:8]}"
            published = self.store.publish_dir(staging, self.key)
            report("saving", 1, 1)  # a cancel that came meanwhile stops it here
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        status, number = finish_registration(self.settings.resolved_database_url, spec.job_id,
                                             storage_key=self.key, files=published)
        if number is None:
            drop_files(self.store, self.key)
        log.info("job %s: registration %s, version %s", spec.job_id, status, number)
        return status
