"""Refusals of the registry the caller can show to a client, each with its HTTP status."""

from __future__ import annotations

from collections.abc import Sequence


class RegistryError(Exception):
    """A refusal the caller can show to a client; `status` is the matching HTTP status."""

    status = 400

    def __init__(self, message: str, loc: Sequence[str | int] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = list(loc) if loc is not None else None


class NotFound(RegistryError):
    status = 404


class Conflict(RegistryError):
    status = 409


class Invalid(RegistryError):
    status = 422


class TooLarge(RegistryError):
    status = 413
