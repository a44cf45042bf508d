"""What a failed job tells its client: a clear error type and message, never a stack trace,
a file path or an internal detail (the traceback goes to the worker log)."""

from __future__ import annotations

import os
import re

import torch

from alkn_core import CalibrationError
from alkn_core.chat_template import ChatTemplateError
from registry.jobs import JobError
from registry.model_files import InvalidModelFiles

from .job_control import MESSAGES


def is_panic(exc: BaseException) -> bool:
    """A Rust library's panic (pyo3's PanicException: tokenizers, safetensors), which derives
    from BaseException and has no importable class to test against."""
    return type(exc).__name__ == "PanicException"


def describe_error(exc: BaseException, stage: str | None) -> JobError:
    """A clear error for clients: no stack trace, and no file path or internal detail (the
    traceback goes to the worker log)."""
    if isinstance(exc, CalibrationError):
        # Says which alpha came closest and how close: the client's next move depends on it.
        return JobError("calibration_failed", str(exc)[:1000])
    if isinstance(exc, InvalidModelFiles):
        # Its message names what is wrong within the version, never a path outside it.
        return JobError("invalid_model_files", str(exc)[:1000])
    if isinstance(exc, ChatTemplateError):  # whichever stage first rendered it
        return JobError("invalid_input", str(exc)[:1000])
    # reading the version's files or tokenizing with them (saving: our own files)
    if is_panic(exc) and stage != "saving":
        return JobError("invalid_model_files", "a library reading the version's files (its "
                        "tokenizer or weights) failed on them or on the request's text "
                        "(PanicException)")
    if isinstance(exc, torch.OutOfMemoryError):
        return JobError("out_of_memory", "the job ran out of accelerator memory; lower "
                                         "batch_size or max_length")
    reason = store_failure(exc) if stage in ("loading", "saving") else None
    if reason is not None:  # disk full, read-only, permissions, S3 refusing
        what = "write the new version to" if stage == "saving" else "read the base version from"
        return JobError("artifact_store_error", f"could not {what} the artifact store "
                                                f"({reason}); nothing was published")
    if isinstance(exc, ValueError) and stage not in ("loading", "saving"):
        # alkn_core's ValueErrors name the bad parameter or item: meant for the client.
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return JobError("invalid_input", message[:1000])
    where = f" while {MESSAGES[stage]}" if stage in MESSAGES else ""
    return JobError("internal_error",
                    f"the job failed{where} ({type(exc).__name__}); see the worker log")


def store_failure(exc: BaseException) -> str | None:
    """Why the store failed, without paths: the OS error's text (also when a library wraps
    it, as safetensors does: "... (os error 28)"), or the S3 client's error class."""
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    found = re.search(r"os error (\d+)", str(exc))
    if found:
        return os.strerror(int(found.group(1)))
    if type(exc).__module__.startswith(("botocore", "boto3")):
        return f"S3: {type(exc).__name__}"
    return None
