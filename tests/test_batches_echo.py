"""The echo model's bounds: OpenAI's 2048 inputs per embeddings request, a cap on the numbers
in one answer, and heavy answers computed off the event loop."""

from __future__ import annotations

import asyncio
import json
import time

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
