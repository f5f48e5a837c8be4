"""The echo model's bounds: OpenAI's 2048 inputs per embeddings request, a cap on the numbers
in one answer, and heavy answers computed off the event loop; the models it serves; the
endpoints it answers (moderations) and those it says it cannot (images, videos)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from openai.types import ModerationCreateResponse

from filesd.batches.echo import MAX_EMBEDDING_VALUES, EchoUpstream


def echo() -> EchoUpstream:
    return EchoUpstream(lambda method, route, project: None)


async def test_more_than_2048_inputs_is_a_400() -> None:
    body = {"model": "e", "input": ["x"] * 2049, "dimensions": 1}
    answer = await echo().send("/v1/embeddings", body, "p")
    assert answer.status == 400
    assert answer.body["error"]["param"] == "input"
    assert "2048" in answer.body["error"]["message"]
    body["input"] = ["x"] * 2048
    assert (await echo().send("/v1/embeddings", body, "p")).status == 200


async def test_inputs_times_dimensions_is_capped_so_an_answer_stays_small() -> None:
    body = {"model": "e", "input": ["x"] * 2048, "dimensions": 4096}
    answer = await echo().send("/v1/embeddings", body, "p")
    assert answer.status == 400
    assert str(MAX_EMBEDDING_VALUES) in answer.body["error"]["message"]
    # The largest allowed answer is under 8 MiB of JSON.
    body["dimensions"] = MAX_EMBEDDING_VALUES // 2048
    answer = await echo().send("/v1/embeddings", body, "p")
    assert answer.status == 200
    assert len(json.dumps(answer.body)) < 8 * 1024 * 1024


async def test_a_heavy_answer_does_not_block_the_event_loop() -> None:
    body = {"model": "e", "input": ["x"] * 512, "dimensions": 512}
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.005)  # ticking
    started = time.perf_counter()
    answer = await echo().send("/v1/embeddings", body, "p")
    took = time.perf_counter() - started
    await asyncio.sleep(0.005)  # the tick after the answer records the last gap
    done.set()
    await ticking
    assert answer.status == 200 and len(answer.body["data"]) == 512
    # The answer takes ~0.1 s of CPU; the loop never stalls for a large part of it.
    assert max(gaps) < max(0.05, took / 2), (max(gaps), took)


async def test_it_serves_echo_and_openais_model_families_only() -> None:
    served = ["echo", "echo-1", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "o3", "o4-mini"]
    served += ["text-embedding-3-small", "omni-moderation-latest", "gpt-image-1", "davinci-002"]
    for model in served:
        assert await echo().knows_model(model), model
    for model in ("m", "llama3.2:3b", "echoes", "o5", "gpt4", ""):
        assert not await echo().knows_model(model), model


async def test_moderations_are_answered_in_openais_shape() -> None:
    inputs: list[object] = [
        "hello",
        ["one", "two"],
        [{"type": "text", "text": "a cat"}, {"type": "image_url", "image_url": {"url": "x"}}],
    ]
    for given in inputs:
        body = {"model": "omni-moderation-latest", "input": given}
        answer = await echo().send("/v1/moderations", body, "p")
        assert answer.status == 200, answer.body
        parsed = ModerationCreateResponse.model_validate(answer.body)
        assert parsed.model == "omni-moderation-latest"
        assert len(parsed.results) == (2 if given == ["one", "two"] else 1)
        assert not any(result.flagged for result in parsed.results)
        assert answer == await echo().send("/v1/moderations", body, "p")
    images = answer.body["results"][0]["category_applied_input_types"]
    assert images["violence"] == ["text", "image"] and images["hate"] == ["text"]
    answer = await echo().send("/v1/moderations", {"model": "omni-moderation-latest"}, "p")
    assert (answer.status, answer.body["error"]["param"]) == (400, "input")


@pytest.mark.parametrize(
    ("endpoint", "made"),
    [
        ("/v1/images/generations", "images"),
        ("/v1/images/edits", "images"),
        ("/v1/videos", "videos"),
    ],
)
async def test_what_it_cannot_make_it_refuses_saying_so(endpoint: str, made: str) -> None:
    answer = await echo().send(endpoint, {"model": "gpt-image-1", "prompt": "a cat"}, "p")
    assert answer.status == 400
    assert not answer.retryable
    error = answer.body["error"]
    assert error["code"] == "unsupported_endpoint"
    assert error["message"] == (
        f"The built-in echo model makes no {made}, so it cannot answer {endpoint}: run this "
        "batch on an upstream that does ([batches] upstream)."
    )
