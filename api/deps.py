"""Dependencies: settings, database session and artifact store of the running app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from config.settings import Settings
from registry.db import new_session
from registry.store import ArtifactStore, open_store


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> ArtifactStore:
    """The app's artifact store (opened by the lifespan; opened here if a caller skipped it)."""
    state = request.app.state
    if getattr(state, "store", None) is None:
        state.store = open_store(state.settings.resolved_artifact_root)
    return state.store


def get_session(request: Request) -> Iterator[Session]:
    session = new_session(request.app.state.db_url)
    try:
        yield session
    finally:
        session.close()  # rolls back whatever the route did not commit


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
# scope="function": the connection goes back to the pool before a (long) streamed download.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
