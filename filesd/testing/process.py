"""`ServerProcess`: a `filesd serve` (or any server that prints its URL) in a subprocess.

The one launcher of the test suite and the benchmark scripts:

    server = ServerProcess(["--data-dir", str(data)], cwd=tmp_path)
    ... server.url, server.base_url, server.data_dir ...
    assert server.stop() == 0           # SIGTERM, then the exit status

Output goes to files in `cwd`, not pipes: a pipe nobody drains would block the server once its
access log filled the pipe's buffer.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

FILESD = [sys.executable, "-m", "filesd", "serve", "--port", "0"]
_numbers = itertools.count(1)


class ServerProcess:
    """A server subprocess on a free port. `command` defaults to `filesd serve --port 0`; `args`
    follow it, `prefix` goes before it (e.g. `prlimit`). Waits until the URL is printed."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        timeout: float = 20.0,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        number = next(_numbers)
        self.args = args
        self.cwd = cwd
        self.stdout_path = cwd / f"server-{os.getpid()}-{number}.out"
        self.stderr_path = cwd / f"server-{os.getpid()}-{number}.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*(prefix or []), *(command or FILESD), *args],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        deadline = time.monotonic() + timeout
        while (match := re.search(r"http://\S+?:\d+", self.stdout_text())) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise RuntimeError(f"the server did not start: {self.stderr_text()}")
            time.sleep(0.02)
        self.url = match.group(0)
        self.base_url = self.url + "/v1"
        # "(data in DIR)", or "(metadata in ...; blobs in ...; local data in DIR)".
        data = re.search(r"(?:\(|; local )data in (.+)\)", self.stdout_text())
        self.data_dir = Path(data.group(1)) if data else None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `sig` (if still running) and return the exit status; SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")
