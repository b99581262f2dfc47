"""Request dependencies: the app's settings and store, as `Annotated` aliases for routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from budget_service.settings import Settings
from budget_service.store import Store


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
