"""A lean access log: one line per request, with its request id; never a header or a key."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .errors import REQUEST_ID


class AccessLogger(AbstractAccessLogger):
    """`remote "METHOD path" status bytes duration request-id`.

    aiohttp's default format costs a strftime per request, and logging adds its own timestamp
    anyway; this one formats lazily and only when INFO is enabled.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %s %.1fms %s',
            request.remote,
            request.method,
            request.path_qs,
            response.status,
            response.body_length,
            time * 1000,
            request.get(REQUEST_ID, "-"),
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
