"""`upstream = "echo"`: a deterministic model in process, for tests and CI.

Chat completions, completions and responses answer with the last user message (the prompt),
embeddings with unit vectors derived from each input's SHA-256, moderations with nothing
flagged; `usage` counts about four characters a token, as real tokenizers do for English.
Images and videos it cannot make: such a request gets a 400 saying so (its line in the error
file). It serves "echo" and the names of OpenAI's model families (`knows_model`). The same
request always gets the same answer (ids included), whatever the time. The fault rules
(`[testing] faults`, POST /admin/faults) apply: a rule whose route is the batch's endpoint
("/v1/chat/completions") adds latency, answers its status, or drops the connection, for these
requests as for the API's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..faultrules import FaultRule
from .upstream import Answer, Unreachable

# Dimensions of an embedding unless the request asks for `dimensions`.
EMBEDDING_DIMENSIONS = 64
MAX_DIMENSIONS = 4096
# Inputs of one embeddings request at most (OpenAI's limit).
MAX_EMBEDDING_INPUTS = 2048
# Numbers in one embeddings answer at most: about 10 bytes of JSON each, so an answer stays
# under ~6 MB (below [batches] max_response_bytes' default) and ~0.3 s of CPU.
MAX_EMBEDDING_VALUES = 2**19
# Work above these (~0.5 ms) runs in a thread, not on the event loop.
INLINE_VALUES = 1024
INLINE_CHARS = 64 * 1024

# The models it serves: these names, and any name that starts with one of them and "-"
# ("gpt-4o-mini-2024-07-18"), so a job written for OpenAI runs on it unchanged.
MODEL_FAMILIES = (
    "echo",
    "gpt",
    "chatgpt",
    "o1",
    "o3",
    "o4",
    "text-embedding",
    "omni-moderation",
    "text-moderation",
    "dall-e",
    "sora",
    "davinci",
    "babbage",
    "computer-use",
    "codex",
)
# The endpoints it cannot answer, and what they would make.
MAKES_NOTHING_FOR = {
    "/v1/images/generations": "images",
    "/v1/images/edits": "images",
    "/v1/videos": "videos",
}
# OpenAI's moderation categories, and those it also applies to images.
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
IMAGE_CATEGORIES = frozenset(
    {
        "self-harm",
        "self-harm/intent",
        "self-harm/instructions",
        "sexual",
        "violence",
        "violence/graphic",
    }
)

_FAULT_MESSAGES = {
    429: "Rate limit reached for requests.",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The server is overloaded or not ready yet.",
}


def tokens(text: str) -> int:
    """A realistic token count: about four characters a token, at least one for any text."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


class EchoUpstream:
    """The built-in model. `take_fault(method, route, project)` is the app's fault rules'."""

    TakeFault = Callable[[str, str, str | None], FaultRule | None]

    def __init__(self, take_fault: TakeFault) -> None:
        self._take_fault = take_fault
        # Heavy answers are worked out in one thread of their own: they hold the GIL, so more
        # threads would not answer sooner, and each thread that once made a copy of a long
        # prompt keeps the memory it took (glibc gives every thread an arena of its own).
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="filesd-echo")

    async def send(self, endpoint: str, body: dict[str, Any], project: str) -> Answer:
        rule = self._take_fault("POST", endpoint, project)
        if rule is not None:
            if rule.latency_ms:
                await asyncio.sleep(rule.latency_ms / 1000)
            if rule.disconnect:
                raise Unreachable("the connection was dropped (fault rule)")
            if rule.status is not None:
                return _fault_answer(rule)
        if _heavy(endpoint, body):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._worker, _respond, endpoint, body)
        return _respond(endpoint, body)

    async def knows_model(self, model: str) -> bool:
        return any(model == f or model.startswith(f + "-") for f in MODEL_FAMILIES)

    async def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


def _respond(endpoint: str, body: dict[str, Any]) -> Answer:
    # Once per request: it encodes the whole body (a copy of a long prompt).
    key = _digest(endpoint, body)
    request_id = "req_" + key[:32]
    try:
        answer = _answer(endpoint, body, key)
    except _BadRequest as error:
        refusal = _error(str(error), "invalid_request_error", error.param, error.code)
        return Answer(400, refusal, request_id)
    return Answer(200, answer, request_id)


def _heavy(endpoint: str, body: dict[str, Any]) -> bool:
    """Whether answering takes more than ~0.5 ms: many embedding numbers, or much text (a
    walk over the body's structure, copying nothing)."""
    if endpoint == "/v1/embeddings":
        given = body.get("input")
        count = len(given) if isinstance(given, list) else 1
        dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
        if isinstance(dimensions, int) and count * dimensions > INLINE_VALUES:
            return True
    return _chars_over(body, INLINE_CHARS) < 0


def _chars_over(value: object, budget: int) -> int:
    """`budget` less the characters of the strings in `value`, stopping below zero."""
    stack = [value]
    while stack and budget >= 0:
        item = stack.pop()
        if isinstance(item, str):
            budget -= len(item)
        elif isinstance(item, dict):
            budget -= len(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            budget -= len(item)
            stack.extend(item)
    return budget


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def _answer(endpoint: str, body: dict[str, Any], key: str) -> dict[str, Any]:
    """The answer to `body` (`key`: its digest, which its ids are made of)."""
    model = str(body.get("model", ""))
    if endpoint == "/v1/chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("'messages' must be a non-empty array.", "messages")
        text = _last_user_text(messages)
        prompt = sum(tokens(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
        return {
            "id": f"chatcmpl-{key[:24]}",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _chat_usage(prompt, tokens(text)),
            "system_fingerprint": "fp_filesd_echo",
        }
    if endpoint == "/v1/completions":
        prompt_value = body.get("prompt", "")
        text = prompt_value if isinstance(prompt_value, str) else _text_of(prompt_value)
        return {
            "id": f"cmpl-{key[:24]}",
            "object": "text_completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
            "usage": _chat_usage(tokens(text), tokens(text)),
        }
    if endpoint == "/v1/responses":
        given = body.get("input", "")
        text = given if isinstance(given, str) else _last_user_text(given)
        prompt = tokens(given) if isinstance(given, str) else tokens(_text_of(given))
        return {
            "id": f"resp_{key[:32]}",
            "object": "response",
            "created_at": 0,
            "status": "completed",
            "model": model,
            "output": [
                {
                    "id": f"msg_{key[:32]}",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": tokens(text),
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + tokens(text),
            },
        }
    if endpoint == "/v1/embeddings":
        return _embeddings(body, model)
    if endpoint == "/v1/moderations":
        return _moderations(body, model, key)
    made = MAKES_NOTHING_FOR.get(endpoint, "answers")
    raise _BadRequest(
        f"The built-in echo model makes no {made}, so it cannot answer {endpoint}: run this "
        "batch on an upstream that does ([batches] upstream).",
        code="unsupported_endpoint",
    )


def _moderations(body: dict[str, Any], model: str, key: str) -> dict[str, Any]:
    """Nothing flagged: one result per input (a list of strings is as many inputs; a list of
    parts, text and images, is one)."""
    given = body.get("input")
    if isinstance(given, list) and given and all(isinstance(item, str) for item in given):
        inputs: list[object] = list(given)
    elif isinstance(given, str) or (isinstance(given, list) and given):
        inputs = [given]
    else:
        raise _BadRequest("'input' must be a string or a non-empty array.", "input")
    return {
        "id": f"modr-{key[:24]}",
        "model": model,
        "results": [_moderation(item) for item in inputs],
    }


def _moderation(given: object) -> dict[str, Any]:
    parts = given if isinstance(given, list) else [given]
    images = any(isinstance(p, dict) and p.get("type") == "image_url" for p in parts)
    texts = any(
        isinstance(p, str) or (isinstance(p, dict) and p.get("type") == "text") for p in parts
    )
    kinds = ["text"] if texts or not images else []
    return {
        "flagged": False,
        "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
        "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0),
        "category_applied_input_types": {
            name: kinds + (["image"] if images and name in IMAGE_CATEGORIES else [])
            for name in MODERATION_CATEGORIES
        },
    }


def _embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    given = body.get("input")
    items = given if isinstance(given, list) and given and not _is_tokens(given) else [given]
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise _BadRequest(
            f"'input' has {len(items)} items: at most {MAX_EMBEDDING_INPUTS} per request.",
            "input",
        )
    if any(item is None or item == "" for item in items):
        raise _BadRequest("'input' must be a non-empty string or array.", "input")
    dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
    if not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise _BadRequest(f"'dimensions' must be between 1 and {MAX_DIMENSIONS}.", "dimensions")
    if len(items) * dimensions > MAX_EMBEDDING_VALUES:
        raise _BadRequest(
            f"{len(items)} inputs x {dimensions} dimensions is over the echo model's "
            f"{MAX_EMBEDDING_VALUES} numbers per answer: send fewer inputs per request.",
            "input",
        )
    data = []
    used = 0
    for index, item in enumerate(items):
        text = json.dumps(item, sort_keys=True)
        used += len(item) if _is_tokens(item) else tokens(_text_of(item))
        data.append({"object": "embedding", "index": index, "embedding": _vector(text, dimensions)})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }


def _vector(text: str, dimensions: int) -> list[float]:
    """A unit vector from the text's hash: the same text, the same vector."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        block = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values += [v / 2**31 - 1.0 for v in struct.unpack(">8I", block)]
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def _is_tokens(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int) for v in value)


def _last_user_text(messages: object) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _text_of(content: object) -> str:
    """The text of a message's content: a string, or the text of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif "content" in part:
                    parts.append(_text_of(part["content"]))
        return "".join(parts)
    return ""


def _chat_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _digest(endpoint: str, body: dict[str, Any]) -> str:
    text = json.dumps([endpoint, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _error(
    message: str, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _fault_answer(rule: FaultRule) -> Answer:
    assert rule.status is not None
    wait = rule.retry_after_ms / 1000 if rule.retry_after_ms is not None else rule.retry_after
    message = rule.message or _FAULT_MESSAGES.get(rule.status, "Injected fault.")
    kind = "requests" if rule.status == 429 else "server_error"
    if rule.status < 500 and rule.status != 429:
        kind = "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "param": None, "code": rule.code}}
    return Answer(rule.status, body, None, wait, rule.should_retry)
