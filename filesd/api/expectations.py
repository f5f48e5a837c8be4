"""The `Expect` header, on every route and on paths no route matches.

aiohttp answers `Expect` before any middleware, by the matched route's expect handler, so the
error boundary never sees it: its default handler answers an expectation other than
`100-continue` with a plain-text 417, and one holding bytes that are not UTF-8 with a 500 and a
traceback (it cannot encode the value it quotes). Here every route filesd mounts gets
`expect_handler` (`EXPECT` when nothing is checked before the body is sent), and paths no route
matches get it from `ExpectationRefusal`, a resource that matches only requests whose
expectation is refused. Either way the refusal is in OpenAI's envelope: 400 for a value that is
not UTF-8, 417 for any other value than `100-continue`. The value is never quoted back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import HttpVersion11, web

from .appkeys import AUTHENTICATOR
from .boundary import to_api_error
from .errors import ApiError, InvalidRequest, error_response, invalid_url

Check = Callable[[web.Request], None]
ExpectHandler = Callable[[web.Request], Any]
MatchInfo = web.UrlMappingMatchInfo


def refused_expectation(request: web.BaseRequest) -> ApiError | None:
    """Why the request's `Expect` header is refused, or None: no header, `100-continue`, or
    HTTP/1.0 (whose clients do not wait for an interim answer: RFC 9110 says ignore it)."""
    expect = request.headers.get("Expect")
    if not expect or request.version < HttpVersion11:
        return None
    try:
        expect.encode()  # aiohttp keeps bytes that are not UTF-8 as lone surrogates
    except UnicodeEncodeError:
        return InvalidRequest(
            "The Expect header is not valid UTF-8.", param="Expect", code="invalid_header"
        )
    if expect.lower() != "100-continue":
        return ApiError(
            "Unsupported Expect header: only 100-continue is supported.",
            param="Expect",
            code="expectation_failed",
            status=417,
        )
    return None


def expect_handler(check: Check | None = None) -> ExpectHandler:
    """An expect handler: a refused expectation is answered (see `refused_expectation`);
    `100-continue` is answered with 100 Continue, after `check` (if any) passed.

    With `check`, the key is checked first, then `check` (it raises for a body that cannot
    fit, say), both before the expectation, so a client without a valid key, or with too much
    to send, never sends its body. aiohttp calls this before any middleware, so errors are
    returned (through the error boundary's table), not raised.
    """

    async def handle_expect(request: web.Request) -> web.Response | None:
        if check is not None:
            try:
                request.app[AUTHENTICATOR].project_for(request.headers.get("Authorization"))
                check(request)
            except Exception as error:
                return error_response(to_api_error(request, error))
        refused = refused_expectation(request)
        if refused is not None:
            return error_response(refused)
        if request.version < HttpVersion11:
            return None
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # The interim response is not part of the response body's size.
        request.writer.output_size = 0
        return None

    return handle_expect


EXPECT = expect_handler()


class ExpectationRefusal(web.AbstractResource):
    """Matches, on any path and method, a request whose expectation is refused, and answers it
    (in its expect handler; the handler behind it is never reached). aiohttp tries the
    resources registered at `/` last, after every more specific one: a request a route matches
    gets that route's expect handler; this one catches those no route matches, which would
    otherwise get aiohttp's default."""

    def __init__(self) -> None:
        super().__init__()
        self._route = web.ResourceRoute("*", _unreachable, self, expect_handler=EXPECT)

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **kwargs: str) -> Any:
        raise RuntimeError("ExpectationRefusal has no URL")

    def add_prefix(self, prefix: str) -> None:
        raise RuntimeError("ExpectationRefusal cannot be moved under a prefix")

    def get_info(self) -> Any:  # aiohttp's _InfoDict: all its keys optional
        return {}

    def raw_match(self, path: str) -> bool:
        return False

    async def resolve(self, request: web.Request) -> tuple[MatchInfo | None, set[str]]:
        if refused_expectation(request) is None:
            return None, set()
        return web.UrlMappingMatchInfo({}, self._route), set()

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[web.AbstractRoute]:
        return iter((self._route,))


async def _unreachable(request: web.Request) -> web.StreamResponse:
    # The expect handler answers every request this resource matches; should it ever not,
    # the request is one no route matches.
    raise invalid_url(request)


def refuse_unmatched_expectations(app: web.Application) -> None:
    """Answer a refused expectation on paths no route matches (register after every route)."""
    app.router.register_resource(ExpectationRefusal())
