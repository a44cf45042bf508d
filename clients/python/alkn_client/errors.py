"""Exceptions of the client."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from .models import ForgetRequest, Job


class AlknClientError(Exception):
    """Base of every error this package raises itself (httpx transport errors pass as is)."""


class ApiError(AlknClientError):
    """The server answered with an error status; `problem` is its RFC 9457 document."""

    def __init__(self, status: int, problem: dict[str, Any], *, method: str = "",
                 url: str = "") -> None:
        self.status = status
        self.problem = problem
        self.method = method
        self.url = url
        super().__init__(str(self))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (e.g. across process pools)
        return (type(self), (self.status, self.problem),
                {"method": self.method, "url": self.url})

    @property
    def type(self) -> str:
        return str(self.problem.get("type", "about:blank"))

    @property
    def title(self) -> str:
        return str(self.problem.get("title") or _phrase(self.status))

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or "")

    @property
    def errors(self) -> list[dict[str, Any]]:
        errors = self.problem.get("errors")
        return errors if isinstance(errors, list) else []

    def __str__(self) -> str:
        text = f"{self.status} {self.title}"
        return f"{text}: {self.detail}" if self.detail else text


class ChecksumMismatch(AlknClientError):
    """A downloaded file's sha256 differs from the version's listing (the file is deleted)."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(f"{path}: sha256 {actual} does not match the listing ({expected}); "
                         "the file was deleted, download it again")


class DownloadError(AlknClientError):
    """The server's answer to a download does not fit what was asked (bad Content-Range...)."""


class WaitTimeout(AlknClientError, TimeoutError):
    """`wait` gave up; `last` is the request as last seen."""

    def __init__(self, last: ForgetRequest, timeout: float) -> None:
        self.last = last
        super().__init__(f"forget request {last.id} still {last.status} after {timeout:g} s "
                         f"(stage {last.progress.stage})")


class RequestFailed(AlknClientError):
    """`wait(raise_on_failure=True)`: the request ended failed or cancelled; `request` is
    it as it ended (its `error` says why)."""

    def __init__(self, request: ForgetRequest) -> None:
        self.request = request
        why = f": {request.error.type}: {request.error.message}" if request.error else ""
        super().__init__(f"forget request {request.id} {request.status}{why}")


class RegistrationFailed(AlknClientError):
    """`register_model` of a large source: its registration job failed, was cancelled, or
    did not finish in time; `job` is it as last seen (its `error` says why)."""

    def __init__(self, job: Job, why: str | None = None) -> None:
        self.job = job
        detail = why or (f"{job.error.type}: {job.error.message}" if job.error else job.status)
        super().__init__(f"registration job {job.id}: {detail}")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
