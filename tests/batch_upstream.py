"""A small OpenAI-compatible upstream for the batch tests: what it answers is written in the
request itself, and it counts the calls it gets per request.

The last user message of a chat completion is `<key>|<mode>`; `key` names the request (the
tests use the custom_id) and `mode` says what to answer:

- `ok`: 200, echoing the key;
- `429xN` / `500xN` / `dropxN`: the first N calls get a 429 (with `Retry-After`), a 500 or a
  dropped connection, the next ones a 200;
- `500` / `400`: always that status;
- `slow`: a 200 after `slow_seconds`;
- `hold`: a 200 once the test sets `gate` (an upstream on the test's own event loop only).

Every call also waits `delay` seconds first (settable while running), so a test can catch a
batch mid-way. Requests of up to 64 MiB are taken (a batch's line may be 32 MiB).

`GET /v1/models` lists `listed` (settable while running; None: a 404, as from an upstream
that offers no list; `models_body`, when set, is answered instead, as it is) and counts the
calls in `model_lists`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

CALLS = web.AppKey("calls", collections.Counter)


class Behaviour:
    def __init__(self, *, retry_after: str = "0", slow_seconds: float = 0.5) -> None:
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.delay = 0.0
        self.gate = asyncio.Event()
        self.calls: collections.Counter[str] = collections.Counter()
        self.authorization: set[str] = set()
        self.models: set[str] = set()
        self.listed: list[str] | None = None
        self.models_body: bytes | None = None
        self.model_lists = 0
        # time.monotonic() of the last call (0: none yet).
        self.last_call = 0.0


def make_upstream(behaviour: Behaviour) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        behaviour.authorization.add(request.headers.get("Authorization", ""))
        body = await request.json()
        behaviour.models.add(body.get("model"))
        text = body["messages"][-1]["content"]
        key, _, mode = text.partition("|")
        behaviour.calls[key] += 1
        behaviour.last_call = time.monotonic()
        count = behaviour.calls[key]
        if behaviour.delay:
            await asyncio.sleep(behaviour.delay)
        kind, _, times = mode.partition("x")
        failing = count <= int(times) if times else True
        if kind == "429" and failing:
            return web.json_response(
                {"error": {"message": "slow down", "type": "requests", "code": None}},
                status=429,
                headers={"Retry-After": behaviour.retry_after},
            )
        if kind in ("500", "400") and failing:
            return web.json_response(
                {"error": {"message": f"told to fail: {kind}", "type": "x", "code": None}},
                status=int(kind),
            )
        if kind == "drop" and failing:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if kind == "slow":
            await asyncio.sleep(behaviour.slow_seconds)
        if kind == "hold":
            await behaviour.gate.wait()
        return web.json_response(
            {
                "id": f"chatcmpl-{key}",
                "object": "chat.completion",
                "created": 1,
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": key},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            },
            headers={"x-request-id": f"req_up_{key}_{count}"},
        )

    async def models(request: web.Request) -> web.StreamResponse:
        behaviour.model_lists += 1
        if behaviour.models_body is not None:
            return web.Response(body=behaviour.models_body, content_type="application/json")
        if behaviour.listed is None:
            raise web.HTTPNotFound()
        data = [{"id": name, "object": "model", "owned_by": "test"} for name in behaviour.listed]
        return web.json_response({"object": "list", "data": data})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


@contextlib.contextmanager
def upstream_thread(behaviour: Behaviour) -> Iterator[str]:
    """Run the upstream on a free port in a thread of its own; yields its base URL (".../v1")."""
    started: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        async def main() -> None:
            server = TestServer(make_upstream(behaviour), host="127.0.0.1")
            await server.start_server()
            started.update(url=str(server.make_url("/v1")), stop=asyncio.Event())
            started["loop"] = asyncio.get_running_loop()
            ready.set()
            await started["stop"].wait()
            await server.close()

        asyncio.run(main())

    thread = threading.Thread(target=run, name="test-upstream", daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield started["url"]
    finally:
        started["loop"].call_soon_threadsafe(started["stop"].set)
        thread.join(10)


def request_line(key: str, mode: str = "ok", *, model: str = "gpt-test") -> dict[str, Any]:
    """An input line for the upstream above (custom_id = key)."""
    return {
        "custom_id": key,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"{key}|{mode}"}]},
    }
