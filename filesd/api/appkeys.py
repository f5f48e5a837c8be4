"""Typed keys of the objects `create_app` puts on the application."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..services.files import FileStore
from ..services.uploads import UploadService
from .auth import Authenticator
from .connections import ConnectionGate
from .drain import RequestTracker, UploadSlots

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", FileStore)
REQUESTS = web.AppKey("requests", RequestTracker)
UPLOADS = web.AppKey("uploads", UploadService)
UPLOAD_SLOTS = web.AppKey("upload_slots", UploadSlots)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
CONNECTIONS = web.AppKey("connections", ConnectionGate)
