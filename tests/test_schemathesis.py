"""The 13 operations of the Files, Uploads and Batch APIs driven by schemathesis from filesd's
own /openapi.json against a running server, every answer judged by what OpenAI's clients
expect rather than by filesd's own document: no 5xx, every error in OpenAI's envelope, every
2xx JSON answer valid as the openai SDK's type of that operation, with no field the type does
not know (filesd's documented list extension `total` aside); and a file upload the document
says is valid (an `expires_after` object is one part of JSON, OpenAPI's encoding) is taken.

Bounded and deterministic: the document's examples, a few valid requests on real objects of
the project (made for each case: a case may delete, complete or cancel its object), then a
dozen generated requests per operation, valid or not, derandomized, about ten seconds in all.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any, Literal

import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from openai.types import Batch, FileDeleted, FileObject, FilePurpose, Upload
from openai.types.uploads import UploadPart
from pydantic import BaseModel
from schemathesis.core.result import Ok
from schemathesis.core.transport import Response
from schemathesis.generation.case import Case
from schemathesis.generation.modes import GenerationMode
from schemathesis.schemas import APIOperation

from filesd.testing import FilesdProject, FilesdServer, serve

pytestmark = pytest.mark.slow

EXAMPLES = 12
Operation = APIOperation[Any, Any, Any, Any]
AnyCase = Case[Any]


class _FileObject(FileObject):
    """openai-python's FileObject, its `purpose` widened by the purposes the same SDK uploads
    with (`FilePurpose`): its list of a file's purposes lacks 'evals', which OpenAI's files
    of that purpose carry and filesd answers as given."""

    purpose: FilePurpose | Literal["assistants_output", "batch_output", "fine-tune-results"]  # type: ignore[assignment]


class _Upload(Upload):
    """openai-python's Upload, its file a `_FileObject`."""

    file: _FileObject | None = None


# The SDK's type of each operation's 2xx answer (a list's items, for the lists).
ANSWERS: dict[str, type[BaseModel] | None] = {
    "createFile": _FileObject,
    "listFiles": _FileObject,
    "retrieveFile": _FileObject,
    "deleteFile": FileDeleted,
    "downloadFile": None,  # the file's bytes
    "createUpload": _Upload,
    "addUploadPart": UploadPart,
    "completeUpload": _Upload,
    "cancelUpload": _Upload,
    "createBatch": Batch,
    "listBatches": Batch,
    "retrieveBatch": Batch,
    "cancelBatch": Batch,
}
# Operations that take every request their document says is valid: nothing else (an id that
# exists, text without NUL) decides.
ACCEPTED = {"createFile"}
LISTS = {"listFiles": {"total"}, "listBatches": set()}
ERROR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "message": str,
    "type": str,
    "param": (str, type(None)),
    "code": (str, type(None)),
}
BATCH_LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "echo-1", "messages": [{"role": "user", "content": "hi"}]},
}


@pytest.fixture(scope="module")
def server() -> Iterator[FilesdServer]:
    # Batches stay in progress (their requests take an hour), so that each can be cancelled.
    slow = {"route": "/v1/chat/completions", "latency_ms": 3_600_000}
    with serve(batches={"upstream": "echo"}, testing={"faults": [slow]}) as running:
        yield running


def test_the_sdk_takes_every_answer_of_the_thirteen_operations(server: FilesdServer) -> None:
    project = server.new_project()
    client = project.openai()
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json").include(path_regex="^/v1/")
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert sorted(op.definition.raw["operationId"] for op in operations) == sorted(ANSWERS)
    real = _RealObjects(client)
    answered: dict[str, set[int]] = {}
    for operation in operations:
        answered[_id(operation)] = _drive(operation, server, project, real)
    # The runs judged answers of both kinds: the SDK's types were put to work.
    twos = {op for op, statuses in answered.items() if any(200 <= s < 300 for s in statuses)}
    assert twos == set(ANSWERS), answered
    assert any(s >= 400 for statuses in answered.values() for s in statuses)


def _id(operation: Operation) -> str:
    return str(operation.definition.raw["operationId"])


def _drive(
    operation: Operation, server: FilesdServer, project: FilesdProject, real: _RealObjects
) -> set[int]:
    """Run the operation's cases (its document's examples first); the statuses seen."""
    statuses: set[int] = set()
    name = _id(operation)
    headers = {"Authorization": f"Bearer {project.api_key}"}

    def run(generated: tuple[GenerationMode, AnyCase], use_real: bool) -> None:
        mode, case = generated
        if use_real and case.path_parameters:
            real.fill(name, case)
        response = case.call(base_url=server.url, headers=headers, timeout=30)
        statuses.add(response.status_code)
        _judge(name, case, response)
        if mode is GenerationMode.POSITIVE and name in ACCEPTED:
            assert 200 <= response.status_code < 300, _where(case, response)

    # First what must be answered 2xx (so that the SDK's types surely judge an answer of
    # each operation): the document's examples, and valid requests on real objects; then
    # anything, valid or not, on real objects or none.
    positive = GenerationMode.POSITIVE
    runs: list[
        tuple[int, st.SearchStrategy[tuple[GenerationMode, AnyCase]], st.SearchStrategy[bool]]
    ]
    runs = []
    if examples := operation.get_strategies_from_examples():
        runs.append((1, st.one_of(examples).map(lambda case: (positive, case)), st.just(False)))
    if operation.path_parameters:
        valid = operation.as_strategy(generation_mode=positive)
        runs.append((2, valid.map(lambda case: (positive, case)), st.just(True)))
    runs.append((EXAMPLES, _cases(operation), st.booleans()))
    for count, cases, use_real in runs:
        bounded = settings(
            max_examples=count,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        bounded(given(generated=cases, use_real=use_real)(run))()
    return statuses


def _cases(operation: Operation) -> st.SearchStrategy[tuple[GenerationMode, AnyCase]]:
    """Requests the document says are valid (positive) and ones it says are not (negative),
    each with its kind."""
    return st.sampled_from(list(GenerationMode)).flatmap(
        lambda mode: operation.as_strategy(generation_mode=mode).map(lambda case: (mode, case))
    )


def _where(case: AnyCase, response: Response) -> str:
    sent = response.request.body
    shown = sent[:600] if isinstance(sent, bytes | str) else sent
    return (
        f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text!r}; "
        f"sent {shown!r}"
    )


def _judge(name: str, case: AnyCase, response: Response) -> None:
    where = _where(case, response)
    assert response.status_code < 500, where
    if response.status_code >= 400:
        envelope = json.loads(response.content)
        assert set(envelope) == {"error"}, where
        error = envelope["error"]
        assert set(error) == set(ERROR_FIELDS), where
        for field, kinds in ERROR_FIELDS.items():
            assert isinstance(error[field], kinds), where
        return
    if not 200 <= response.status_code < 300:
        return  # 206, 304 of downloads: no JSON
    model = ANSWERS[name]
    if model is None:
        return
    answer = json.loads(response.content)
    if name in LISTS:
        extensions = LISTS[name]
        envelope_fields = {"object", "data", "first_id", "last_id", "has_more"}
        assert set(answer) == envelope_fields | extensions, where
        assert answer["object"] == "list" and isinstance(answer["has_more"], bool), where
        items = answer["data"]
    else:
        items = [answer]
    for item in items:
        _assert_sdk_type(model, item, where)


def _assert_sdk_type(model: type[BaseModel], data: Any, where: str) -> None:
    """`data` valid as the SDK's `model`, every required field given, and no field the model
    does not know, at any depth (the SDK's models take unknown fields silently)."""
    parsed = model.model_validate(data)
    assert _unknown_fields(parsed) == [], where


def _unknown_fields(value: object, path: str = "") -> list[str]:
    if isinstance(value, BaseModel):
        found = [f"{path}.{key}" for key in value.model_extra or {}]
        for field in type(value).model_fields:
            found += _unknown_fields(getattr(value, field), f"{path}.{field}")
        return found
    if isinstance(value, list):
        return [
            f for index, item in enumerate(value) for f in _unknown_fields(item, f"{path}[{index}]")
        ]
    return []


class _RealObjects:
    """Real objects of the project for a case's path parameters, made fresh for each case (a
    case may delete, complete or cancel its object)."""

    def __init__(self, client: openai.OpenAI) -> None:
        self._client = client

    def fill(self, operation: str, case: AnyCase) -> None:
        if "file_id" in case.path_parameters:
            case.path_parameters = {"file_id": self._file()}
        elif "batch_id" in case.path_parameters:
            case.path_parameters = {"batch_id": self._batch()}
        elif operation == "completeUpload":
            # Its parts given: the upload's one part (and its md5, when one is given).
            upload, part = self._upload(3), self._client.uploads.parts.create
            part_id = part(upload, data=b"abc").id
            case.path_parameters = {"upload_id": upload}
            if isinstance(case.body, dict):
                case.body = {**case.body, "part_ids": [part_id]}
                if "md5" in case.body:
                    case.body["md5"] = hashlib.md5(b"abc").hexdigest()  # noqa: S324
        else:
            # Room for any part generated.
            case.path_parameters = {"upload_id": self._upload(64 * 1024 * 1024)}

    def _file(self) -> str:
        content = io.BytesIO(json.dumps(BATCH_LINE).encode() + b"\n")
        return self._client.files.create(file=("in.jsonl", content), purpose="batch").id

    def _upload(self, size: int) -> str:
        return self._client.uploads.create(
            bytes=size, filename="u.txt", mime_type="text/plain", purpose="assistants"
        ).id

    def _batch(self) -> str:
        return self._client.batches.create(
            input_file_id=self._file(), endpoint="/v1/chat/completions", completion_window="24h"
        ).id
