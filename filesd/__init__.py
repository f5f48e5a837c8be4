"""filesd: a small, fast, durable server for the OpenAI-compatible Files API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("filesd")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
