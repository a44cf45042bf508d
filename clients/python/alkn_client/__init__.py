"""Python client of the ALKN service (docs/api.md): `Client` (sync) and `AsyncClient`.

    from alkn_client import Client

    with Client("http://127.0.0.1:8000", "my-key") as alkn:  # or Client(): $ALKN_URL, $ALKN_API_KEY
        req = alkn.submit("demo", [{"question": "...", "answer": "..."}])
        done = alkn.wait(req.id)
        alkn.download("demo", done.result_version, "models/demo-v2")

Only httpx, pydantic and the standard library: no torch, nothing of the service.
"""

from __future__ import annotations

from ._core import DEFAULT_URL, ListFilters, ModelFields, SubmitFields
from ._download import Download, DownloadedFile, DownloadProgress
from .client import AsyncClient, Client
from .errors import (
    AlknClientError,
    ApiError,
    ChecksumMismatch,
    DownloadError,
    RegistrationFailed,
    RequestFailed,
    WaitTimeout,
)
from .models import (
    FINISHED,
    Alias,
    ErrorInfo,
    FileEntry,
    ForgetRequest,
    Health,
    Job,
    JobEvent,
    JobMetrics,
    Model,
    Page,
    Progress,
    Readiness,
    Version,
)

__all__ = [
    "DEFAULT_URL", "FINISHED", "Alias", "AlknClientError", "ApiError", "AsyncClient",
    "ChecksumMismatch", "Client", "Download", "DownloadError", "DownloadProgress",
    "DownloadedFile", "ErrorInfo", "FileEntry", "ForgetRequest", "Health", "Job", "JobEvent",
    "JobMetrics", "ListFilters", "Model", "ModelFields", "Page", "Progress", "Readiness",
    "RegistrationFailed", "RequestFailed", "SubmitFields", "Version", "WaitTimeout",
]
