"""What the batch service refuses, as plain exceptions (the error boundary, boundary.py,
turns them into OpenAI's error envelope)."""

from __future__ import annotations

DISABLED_MESSAGE = (
    "The Batch API is off on this server: no upstream is configured. Set [batches] upstream "
    'in filesd.toml to "echo" (a built-in deterministic model, for tests) or to the base URL '
    'of an OpenAI-compatible API (e.g. "http://127.0.0.1:11434/v1" for Ollama, '
    '"http://127.0.0.1:8000/v1" for vLLM), then restart filesd.'
)


class BatchesDisabled(Exception):
    """No `[batches] upstream` is configured."""

    def __init__(self) -> None:
        super().__init__(DISABLED_MESSAGE)


class BatchNotFound(Exception):
    """No batch of that id in the caller's project (another project's is answered the same)."""

    def __init__(self, batch_id: str, param: str = "batch_id") -> None:
        super().__init__(f"no batch {batch_id}")
        self.batch_id = batch_id
        self.param = param


class InputFileNotFound(Exception):
    def __init__(self, file_id: str) -> None:
        super().__init__(f"no file {file_id}")
        self.file_id = file_id


class InputFileWrongPurpose(Exception):
    def __init__(self, file_id: str, purpose: str) -> None:
        super().__init__(f"file {file_id} has purpose {purpose}")
        self.file_id = file_id
        self.purpose = purpose


class BatchNotCancellable(Exception):
    """The batch has finished (or is finishing) already."""

    def __init__(self, batch_id: str, status: str) -> None:
        super().__init__(f"batch {batch_id} is {status}")
        self.batch_id = batch_id
        self.status = status
