"""Typed keys of the objects `create_app` puts on the application."""

from __future__ import annotations

from aiohttp import web

from ..batches.service import BatchService
from ..config import Config
from ..services.archive import Archives
from ..services.core import Services
from ..services.files import FileService
from ..services.maintenance import Maintenance
from ..services.uploads import UploadService
from .auth import Authenticator
from .connections import ConnectionGate
from .drain import DownloadSlots, RequestTracker, UploadSlots

CONFIG = web.AppKey("config", Config)
SERVICES = web.AppKey("services", Services)
FILES = web.AppKey("files", FileService)
UPLOADS = web.AppKey("uploads", UploadService)
BATCHES = web.AppKey("batches", BatchService)
MAINTENANCE = web.AppKey("maintenance", Maintenance)
ARCHIVES = web.AppKey("archives", Archives)
REQUESTS = web.AppKey("requests", RequestTracker)
UPLOAD_SLOTS = web.AppKey("upload_slots", UploadSlots)
DOWNLOAD_SLOTS = web.AppKey("download_slots", DownloadSlots)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
CONNECTIONS = web.AppKey("connections", ConnectionGate)
