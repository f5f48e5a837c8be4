"""The route table: each public route declared once, with the types it takes and answers.

A route module declares its handlers on a `Routes` (litestar's typed handlers are the model):
the method and path, the declared type of its query string or JSON body (`schemas.py`), the
object it answers with (`filesd.objects`), and the error statuses it may answer. From that one
declaration the route is mounted (its query or body validated before the handler runs, which
gets them typed) and the OpenAPI document is generated (`openapi.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .expectations import EXPECT, expect_handler
from .schemas import Request
from .validation import json_body, query

Handler = Callable[..., Awaitable[web.StreamResponse]]
Check = Callable[[web.Request], None]

# The statuses any route under /v1 may answer with, whatever it does.
COMMON_ERRORS = (400, 401, 413, 429, 500, 503, 507)


@dataclass(frozen=True)
class Operation:
    """One route: `method` and `path`, and what the OpenAPI document says of it.

    `query` / `body`: the declared types of its query string and JSON body (the handler gets
    them as `query=` / `body=`); `form`: the declared type of its multipart form (read by the
    handler itself, as it streams). `ok`: the declared type of its answer (None: `content`,
    bytes of that media type). `responses`: other answers worth documenting; `errors`: the
    error statuses beyond COMMON_ERRORS. `guard` runs before the body is read, `expect` on
    `Expect: 100-continue` (both raise to refuse). `secured`: under the API's bearer keys."""

    method: str
    path: str
    id: str
    summary: str
    handler: Handler
    ok: Any = None
    ok_description: str = ""
    query: type[Request] | None = None
    body: type[Request] | None = None
    form: type[Request] | None = None
    content: str | None = None
    responses: Mapping[int, str] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    secured: bool = True
    guard: Check | None = None
    expect: Check | None = None

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        arguments: dict[str, Any] = {}
        if self.guard is not None:
            self.guard(request)
        if self.query is not None:
            arguments["query"] = query(request, self.query)
        if self.body is not None:
            arguments["body"] = await json_body(
                request, self.body, allow_empty=self.body.body_optional
            )
        return await self.handler(request, **arguments)


class Routes:
    """The operations of one route module, in the order they are declared."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def route(
        self, method: str, path: str, *, id: str, summary: str, **declared: Any
    ) -> Callable[[Handler], Handler]:
        """Declare the decorated handler as `method path` (see `Operation` for `declared`)."""

        def declare(handler: Handler) -> Handler:
            self.operations.append(Operation(method, path, id, summary, handler, **declared))
            return handler

        return declare

    def mount(self, app: web.Application) -> None:
        for op in self.operations:
            expect = expect_handler(op.expect) if op.expect is not None else EXPECT
            handler = _handler(op)
            if op.method == "GET":  # as aiohttp's add_get: HEAD too
                app.router.add_route("HEAD", op.path, handler, expect_handler=expect)
            app.router.add_route(op.method, op.path, handler, expect_handler=expect)


def _handler(op: Operation) -> Handler:
    """`op` as a coroutine function (aiohttp takes no other kind of handler)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await op(request)

    return handle
