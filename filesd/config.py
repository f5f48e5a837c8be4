"""Configuration: one TOML file, every key optional, read through declared types.

Each table of the file is a frozen dataclass (pydantic's, so `dataclasses.fields`/`replace`
work as on any dataclass): its fields are the keys the table may hold, their types the types
the values must have, their checks written beside them. `parse_config` validates an
already-parsed TOML mapping against `Config` and raises `ConfigError` with a message that
names the offending key (`server.port: must be between 0 and 65535, got 70000`). Unknown keys
and wrong types are errors, never ignored, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import field, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from .clock import CLOCK_MAX, is_clock_time
from .faultrules import FaultRule, FaultRuleError, parse_fault_rule
from .values import is_finite_number, is_number

DEFAULT_PURPOSES: tuple[str, ...] = (
    "assistants",
    "batch",
    "fine-tune",
    "vision",
    "user_data",
    "evals",
)
ID_FORMATS = ("uuid", "openai")
# OpenAI's defaults: batch files expire after 30 days, other files never.
DEFAULT_EXPIRES_AFTER: dict[str, int] = {"batch": 30 * 24 * 3600}
# The purposes whose files OpenAI refuses to let you download.
OPENAI_REFUSED_DOWNLOADS: tuple[str, ...] = ("assistants", "user_data")
LOG_LEVELS = ("debug", "info", "warning", "error")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

BATCH_UPSTREAM_HELP = (
    'batches.upstream: expected "" (off), "echo" (the built-in model) or the base URL of an '
    'OpenAI-compatible API, e.g. "http://127.0.0.1:11434/v1"'
)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the key."""


# Every table: unknown keys refused, frozen once read.
_TABLE = ConfigDict(extra="forbid", defer_build=True)


def _refuse(message: str, *, at: str = "", whole: bool = False) -> PydanticCustomError:
    """A refusal worded here: `message` follows the key it is about (the field validated, and
    `at` below it); with `whole`, the message names its key itself."""
    return PydanticCustomError(
        "config", "{message}", {"message": message, "at": at, "whole": whole}
    )


# --- checks of single values ---------------------------------------------------------------


def _s3_connections(value: int) -> int:
    # More would take every connection of an instance's pool to the bucket (128), which its
    # uploads and batch runs need too.
    if value > 128:
        raise _refuse(f"must be at most 128 (an instance's connections to S3), got {value}")
    return value


_at_most_s3_connections = AfterValidator(_s3_connections)


def _at_least(minimum: int, unit: str = "") -> AfterValidator:
    def check(value: int) -> int:
        if value < minimum:
            raise _refuse(f"must be at least {minimum}{unit}, got {value}")
        return value

    return AfterValidator(check)


def _between(low: int, high: int) -> AfterValidator:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise _refuse(f"must be between {low} and {high}, got {value}")
        return value

    return AfterValidator(check)


def _or_more(unit: str = "") -> AfterValidator:
    def check(value: int) -> int:
        if value < 0:
            raise _refuse(f"must be 0 or more{unit}, got {value}")
        return value

    return AfterValidator(check)


def _seconds(value: object) -> object:
    """A duration: an integer or a float, finite and above zero."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(f"expected seconds (a number), got {_type_name(value)}")
    if not is_finite_number(value) or value <= 0:
        raise _refuse(f"must be a finite number of seconds above 0, got {value}")
    return float(value)


def _not_empty(value: str) -> str:
    if not value:
        raise _refuse("must not be empty")
    return value


def _token(value: str) -> str:
    if value and len(value) < 16:
        raise _refuse("use at least 16 characters")
    return value


def _strings(value: object) -> object:
    """An array of non-empty strings, each once."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise _refuse("expected an array of non-empty strings")
    return tuple(dict.fromkeys(value))


Seconds = Annotated[float, BeforeValidator(_seconds)]
Positive = Annotated[StrictInt, _at_least(1)]
Strings = Annotated[tuple[str, ...], BeforeValidator(_strings)]


# --- the tables ----------------------------------------------------------------------------


@dataclass(frozen=True, config=_TABLE)
class ServerConfig:
    host: Annotated[StrictStr, AfterValidator(_not_empty)] = "127.0.0.1"
    port: Annotated[StrictInt, _between(0, 65535)] = 8080
    # Seconds a client has to send a request's headers: from the connection's start, or from
    # the first byte of a later request on a kept-alive connection (slow-header clients).
    header_timeout: Seconds = 10.0
    # Seconds an idle kept-alive connection stays open (aiohttp's own default is an hour).
    keepalive_timeout: Seconds = 75.0
    # Open connections at most; beyond it a new connection gets a 503 and is closed at once.
    max_connections: Positive = 1024


def _endpoint_url(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise _refuse("expected an http:// or https:// URL")
    # Messages about the endpoint show its URL: it must hold no credentials (nor is the URL
    # shown here: it may).
    if "@" in urlsplit(value).netloc:
        raise _refuse(
            "must not hold a user or password: set access_key_id and secret_access_key instead"
        )
    return value


@dataclass(frozen=True, config=_TABLE)
class S3Config:
    # "" = AWS (or AWS_ENDPOINT_URL); e.g. "http://127.0.0.1:9000" for a local server.
    endpoint: Annotated[StrictStr, AfterValidator(_endpoint_url)] = ""
    region: StrictStr = "us-east-1"
    # "" = the standard AWS environment variables and credential chain.
    access_key_id: StrictStr = ""
    secret_access_key: StrictStr = field(default="", repr=False)
    # true: content is a 307 to a short-lived presigned URL.
    redirect_downloads: StrictBool = False


def _data_dir(value: object, info: ValidationInfo) -> object:
    """A path; a relative one is relative to the configuration file's directory."""
    if isinstance(value, Path):
        path = value
    elif not isinstance(value, str):
        raise _refuse(f"expected a string, got {_type_name(value)}")
    elif not value:
        raise _refuse("must not be empty")
    else:
        path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def _database(value: str) -> str:
    if value and not value.startswith(("postgresql://", "postgres://")):
        raise _refuse(
            'expected "" (SQLite in data_dir) or a URL "postgresql://user@host:5432/dbname"'
        )
    problem = postgres_url_problem(value) if value else None
    if problem is not None:
        # The URL itself is never shown: it may hold the password.
        raise _refuse(
            f"not a usable PostgreSQL URL ({problem}); in the user name and password, "
            'percent-encode "@", "/", "?", "#", "[" and "]" (e.g. %40 for "@")'
        )
    return value


def postgres_url_problem(url: str) -> str | None:
    """What keeps a PostgreSQL URL from being read alike by every parser, or None.

    A user name or password holding an unencoded "@", "/", "?", "#" or bracket spills into
    the host, port, path or query: parsers then disagree on where it ends (the driver splits
    at the first "@", urllib at the last), and the parts that messages show (host, port,
    database: `describe_dsn`) would hold a piece of the password."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (read for its ValueError)
    except ValueError:
        return "its host or port cannot be read"
    userinfo = parts.netloc.rpartition("@")[0]
    if "@" in userinfo or "@" in parts.path + parts.query + parts.fragment:
        return 'an "@" that does not end the user name and password'
    return None


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for messages: user, host, port and database, never the password
    (nor, for a URL whose password would spill into them, these parts: `postgres_url_problem`)."""
    if postgres_url_problem(dsn) is not None:
        return "the PostgreSQL server of storage.database"
    parts = urlsplit(dsn)
    user = f"{unquote(parts.username)}@" if parts.username else ""
    host = parts.hostname or "localhost"
    address = f"{f'[{host}]' if ':' in host else host}:{parts.port or 5432}"
    database = unquote(parts.path.lstrip("/")) or "(default)"
    return f"PostgreSQL {user}{address}, database {database!r}"


def describe_storage(storage: StorageConfig) -> str:
    """Where the metadata and the bytes are, for the start line, without secrets: the data dir
    alone when it holds both; else the database (`describe_dsn`), the bucket and its endpoint's
    host, and the data dir (then only the local spool, or the blobs beside PostgreSQL)."""
    if not storage.database and not storage.blobs:
        return f"data in {storage.data_dir}"
    metadata = describe_dsn(storage.database) if storage.database else "SQLite"
    if storage.blobs:
        endpoint = urlsplit(storage.s3.endpoint)
        # The host and port only: an endpoint URL could carry a user and password.
        at = f" at {endpoint.hostname}" + (f":{endpoint.port}" if endpoint.port else "")
        blobs = storage.blobs + (at if endpoint.hostname else "")
    else:
        blobs = "the data dir"
    return f"metadata in {metadata}; blobs in {blobs}; local data in {storage.data_dir}"


def _blobs(value: str) -> str:
    if value and (not value.startswith("s3://") or not value.removeprefix("s3://").split("/")[0]):
        raise _refuse('expected "" (data_dir/blobs), "s3://bucket" or "s3://bucket/prefix"')
    return value


@dataclass(frozen=True, config=_TABLE)
class StorageConfig:
    data_dir: Annotated[Path, BeforeValidator(_data_dir)] = Field(
        default=Path("filesd-data"), validate_default=True
    )
    sweep_interval: Annotated[StrictInt, _at_least(1, " second")] = 60
    deleted_retention: Annotated[StrictInt, _or_more(" seconds")] = 30 * 24 * 3600
    # "" = SQLite in data_dir; else "postgresql://user@host:5432/dbname". Not in the repr:
    # it may hold the password.
    database: Annotated[StrictStr, AfterValidator(_database)] = field(default="", repr=False)
    # "" = data_dir/blobs; else "s3://bucket" or "s3://bucket/prefix".
    blobs: Annotated[StrictStr, AfterValidator(_blobs)] = ""
    # Seconds an instance counts as alive after its last heartbeat (sent every third of it):
    # how long a killed instance's leases, claims and completions wait before others take over.
    lease_seconds: Annotated[StrictInt, _at_least(3)] = 30
    s3: S3Config = field(default_factory=S3Config)

    @property
    def bucket(self) -> tuple[str, str] | None:
        """(bucket, prefix) of `blobs` when it names S3, else None."""
        if not self.blobs:
            return None
        bucket, _, prefix = self.blobs.removeprefix("s3://").partition("/")
        return bucket, prefix.strip("/")


NoLimit = Annotated[StrictInt, _at_least(0, " (no limit)")]


@dataclass(frozen=True, config=_TABLE)
class LimitsConfig:
    max_file_bytes: Positive = 512 * 1024 * 1024
    max_upload_bytes: Positive = 8 * 1024 * 1024 * 1024
    max_part_bytes: Positive = 64 * 1024 * 1024
    # Parts one upload may have (each costs a file, a directory fsync and a row).
    max_upload_parts: Positive = 10_000
    max_concurrent_uploads: Positive = 64
    body_timeout: Positive = 60
    # Per project; 0 means no limit.
    max_files_per_project: NoLimit = 0
    max_bytes_per_project: NoLimit = 0
    # Bytes/s a request body must keep up, over each window of `body_timeout` seconds after its
    # first `body_timeout` seconds (api/bodies.py); 0: off.
    min_body_rate: NoLimit = 1024
    # Upload slots one project may hold, always; 0: half of max_concurrent_uploads (at least
    # 1) while more than one project has keys (not for a single tenant, nor in open mode,
    # where any token is a project).
    max_concurrent_uploads_per_project: NoLimit = 0
    # Downloads reading from the blob backend at once (S3; local files are sent by the kernel
    # and need none); the next one waits. One project holds at most half while more than one
    # project has keys.
    max_concurrent_downloads: Annotated[StrictInt, _at_least(1), _at_most_s3_connections] = 64

    @model_validator(mode="after")
    def _share(self) -> LimitsConfig:
        share = self.max_concurrent_uploads_per_project
        if share > self.max_concurrent_uploads:
            raise _refuse(
                "must not exceed limits.max_concurrent_uploads "
                f"({self.max_concurrent_uploads}), got {share}",
                at="max_concurrent_uploads_per_project",
            )
        return self


def _id_format(value: str) -> str:
    if value not in ID_FORMATS:
        raise _refuse(f"must be one of {list(ID_FORMATS)}, got {value!r}")
    return value


def _purposes(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise _refuse("must list at least one purpose")
    return value


def _expiry_table(value: object) -> object:
    if not isinstance(value, Mapping):
        raise _refuse("expected a table of purpose = seconds")
    for purpose, seconds in value.items():
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            raise _refuse(f"expected an integer, got {_type_name(seconds)}", at=purpose)
    return value


@dataclass(frozen=True, config=_TABLE)
class FilesConfig:
    id_format: Annotated[StrictStr, AfterValidator(_id_format)] = "uuid"
    purposes: Annotated[Strings, AfterValidator(_purposes)] = DEFAULT_PURPOSES
    default_expires_after: Annotated[Mapping[str, int], BeforeValidator(_expiry_table)] = field(
        default_factory=lambda: dict(DEFAULT_EXPIRES_AFTER)
    )
    refuse_downloads: StrictBool = False
    refused_download_purposes: Strings = OPENAI_REFUSED_DOWNLOADS

    @model_validator(mode="after")
    def _expiries(self) -> FilesConfig:
        """Each default expiry names a purpose; 0 seconds means never (left out)."""
        for purpose, seconds in self.default_expires_after.items():
            if purpose not in self.purposes:
                raise _refuse("not one of files.purposes", at=f"default_expires_after.{purpose}")
            if seconds < 0:
                raise _refuse(
                    "must be 0 (never) or more seconds", at=f"default_expires_after.{purpose}"
                )
        kept = {p: s for p, s in self.default_expires_after.items() if s}
        if kept != self.default_expires_after:
            return replace(self, default_expires_after=kept)
        return self

    @property
    def download_refused(self) -> frozenset[str]:
        """Purposes whose files cannot be downloaded (none unless `refuse_downloads`)."""
        return frozenset(self.refused_download_purposes if self.refuse_downloads else ())


def _log_level(value: str) -> str:
    level = value.lower()
    if level not in LOG_LEVELS:
        raise _refuse(f"must be one of {list(LOG_LEVELS)}, got {level!r}")
    return level


@dataclass(frozen=True, config=_TABLE)
class LogConfig:
    level: Annotated[StrictStr, AfterValidator(_log_level)] = "info"
    access_log: StrictBool = True


@dataclass(frozen=True, config=_TABLE)
class AdminConfig:
    """The admin API (/admin/...): off unless `token` is set."""

    token: Annotated[StrictStr, AfterValidator(_token)] = field(default="", repr=False)
    journal_size: Annotated[StrictInt, _or_more()] = 1000


@dataclass(frozen=True, config=_TABLE)
class MetricsConfig:
    """GET /metrics: keyless in open mode; once API keys exist (in the file or made in the
    database) it needs this token or the admin token, as its totals span every project."""

    token: Annotated[StrictStr, AfterValidator(_token)] = field(default="", repr=False)


def _optional_int(value: object) -> object:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _refuse(f"expected an integer, got {_type_name(value)}")
    return value


def _frozen_time(value: object) -> object:
    # The bound POST /admin/clock keeps to: a later time overflows the integers that times
    # are stored as, and every request would fail.
    if value is None:
        return None
    if not is_clock_time(value):
        shown = value if is_number(value) else _type_name(value)
        raise _refuse(
            f"expected Unix seconds from 0 to {CLOCK_MAX} (the end of year 9999), got {shown}"
        )
    return float(value)


def _faults(value: object, info: ValidationInfo) -> object:
    """Fault rules, as the admin API takes them (`faultrules.parse_fault_rule`)."""
    if not isinstance(value, list | tuple):
        raise _refuse("expected an array of tables")
    try:
        return tuple(
            rule if isinstance(rule, FaultRule) else parse_fault_rule(rule, f"testing.faults[{i}]")
            for i, rule in enumerate(value)
        )
    except FaultRuleError as error:
        raise _refuse(str(error), whole=True) from None


@dataclass(frozen=True, config=_TABLE)
class TestingConfig:
    """For test runs: reproducible ids, a frozen clock, faults from the start."""

    __test__: ClassVar[bool] = False  # (not a test class, pytest)

    id_seed: Annotated[int | None, BeforeValidator(_optional_int)] = None
    frozen_time: Annotated[float | None, BeforeValidator(_frozen_time)] = None
    faults: Annotated[tuple[FaultRule, ...], BeforeValidator(_faults)] = ()


def _api_key(entry: object) -> object:
    """A configured key: the secret itself (`key`, kept only as its digest) or its digest."""
    if not isinstance(entry, Mapping):
        raise _refuse(f"expected a table, got {_type_name(entry)}")
    for name in entry:
        if name not in ApiKey.toml_keys:
            allowed = ", ".join(sorted(ApiKey.toml_keys))
            raise _refuse(f"unknown key (allowed: {allowed})", at=name)
    project = entry.get("project", "")
    if not isinstance(project, str) or not project:
        raise _refuse("required, a non-empty string", at="project")
    if ("key" in entry) == ("key_sha256" in entry):
        raise _refuse("set exactly one of 'key' or 'key_sha256'")
    if "key" in entry:
        secret = entry["key"]
        if not isinstance(secret, str):
            raise _refuse(f"expected a string, got {_type_name(secret)}", at="key")
        if not secret:
            raise _refuse("must not be empty", at="key")
        digest = hashlib.sha256(secret.encode()).hexdigest()
    else:
        given = entry["key_sha256"]
        digest = given.lower() if isinstance(given, str) else ""
        if not _SHA256_HEX.fullmatch(digest):
            raise _refuse("must be 64 hexadecimal characters", at="key_sha256")
    return {"key_sha256": digest, "project": project}


@dataclass(frozen=True, config=_TABLE)
class ApiKey:
    """A configured key, kept only as the SHA-256 digest of the secret."""

    # What a [[auth.keys]] table may hold: the secret itself may be given instead of its digest.
    toml_keys: ClassVar[tuple[str, ...]] = ("key", "key_sha256", "project")

    key_sha256: StrictStr
    project: StrictStr


def _keys(value: object) -> object:
    if not isinstance(value, list | tuple):
        raise _refuse(f"expected an array of tables, got {_type_name(value)}")
    return value


@dataclass(frozen=True, config=_TABLE)
class AuthConfig:
    # Whether the server runs open is the running `Authenticator`'s to say (keys made with
    # `filesd keys create` live in the database, not here), so there is no `open_mode` here.
    keys: Annotated[
        tuple[Annotated[ApiKey, BeforeValidator(_api_key)], ...], BeforeValidator(_keys)
    ] = ()

    @model_validator(mode="after")
    def _distinct(self) -> AuthConfig:
        seen: set[str] = set()
        for i, key in enumerate(self.keys):
            if key.key_sha256 in seen:
                raise _refuse("the same key is configured twice", at=f"keys[{i}]")
            seen.add(key.key_sha256)
        return self


@dataclass(frozen=True, config=_TABLE)
class UiConfig:
    """The web console (/ui/) and the page `GET /` shows a browser."""

    enabled: StrictBool = True


def _upstream(value: object) -> object:
    if not isinstance(value, str):
        return value
    upstream = value.rstrip("/")
    if upstream not in ("", "echo") and not upstream.startswith(("http://", "https://")):
        raise _refuse(BATCH_UPSTREAM_HELP, whole=True)
    return upstream


def _backoff(value: object) -> object:
    if not is_finite_number(value) or value < 0:
        raise _refuse("must be a number of seconds, 0 or more")
    return float(value)


def _model_names(value: object) -> object:
    if not isinstance(value, Mapping):
        return value
    for name, target in value.items():
        if not isinstance(target, str):
            raise _refuse(f"expected a string, got {_type_name(target)}", at=name)
        if not target:
            raise _refuse("must name a model", at=name)
    return value


Concurrency = Annotated[StrictInt, _between(1, 1024)]


@dataclass(frozen=True, config=_TABLE)
class BatchesConfig:
    """The Batch API: where its requests go, and how hard they are pushed."""

    # "" = off (POST /v1/batches is a 400 saying how to turn it on); "echo" = the built-in
    # deterministic model; else an OpenAI-compatible base URL ("https://host/v1").
    upstream: Annotated[StrictStr, BeforeValidator(_upstream)] = ""
    # The bearer token for the upstream, or the name of an environment variable holding it.
    api_key: StrictStr = field(default="", repr=False)
    api_key_env: StrictStr = ""
    # Requests in flight at once, over all batches of this instance, shared fairly between
    # projects (`batches/fairness.py`); also the most requests of one batch under way.
    concurrency: Concurrency = 8
    # Batches driven at once by this instance (each holds its input file open while it runs);
    # projects take turns (`rules.claim_order`, `fairness.to_yield`).
    max_running: Concurrency = 4
    # Seconds one upstream request may take (each attempt).
    request_timeout: Seconds = 600.0
    # Seconds the upstream may stay silent while sending its answer (each read): a slow drip
    # cannot hold a request for the whole request_timeout.
    read_timeout: Seconds = 60.0
    # Bytes of one upstream answer at most; a larger one is a failed request.
    max_response_bytes: Positive = 8 * 1024 * 1024
    # Attempts after the first, on 429, 5xx and network errors.
    max_retries: Annotated[StrictInt, _or_more()] = 5
    # Seconds before the first retry (doubling after each, capped at 60; Retry-After wins).
    retry_backoff: Annotated[float, BeforeValidator(_backoff)] = 1.0
    # OpenAI's limits on an input file.
    max_requests: Positive = 50_000
    max_input_bytes: Positive = 200 * 1024 * 1024
    # The model named in a request -> the model sent upstream. When it names any, these are
    # the only models a batch may name (else the upstream's GET /v1/models decides, or echo's
    # own names; `BatchRunner._knows_model`).
    models: Annotated[Mapping[str, str], BeforeValidator(_model_names)] = field(
        default_factory=dict
    )


@dataclass(frozen=True, config=_TABLE)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    files: FilesConfig = field(default_factory=FilesConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    testing: TestingConfig = field(default_factory=TestingConfig)
    batches: BatchesConfig = field(default_factory=BatchesConfig)
    ui: UiConfig = field(default_factory=UiConfig)

    @model_validator(mode="after")
    def _tokens_of_their_own(self) -> Config:
        keys = ((k.key_sha256, f"auth.keys[{i}]") for i, k in enumerate(self.auth.keys))
        reused = reused_token(self.admin.token, self.metrics.token, keys)
        if reused is not None:
            raise _refuse(reused, whole=True)
        return self

    @model_validator(mode="before")
    @classmethod
    def _every_table(cls, data: Any) -> Any:
        """A table the file leaves out is read as an empty one (so its defaults are read as
        the file's own: a relative data_dir is the file's directory's)."""
        if not isinstance(data, Mapping):
            return data
        return {**{f.name: {} for f in dataclasses.fields(cls)}, **data}

    def with_overrides(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        data_dir: Path | None = None,
        log_level: str | None = None,
    ) -> Config:
        """Return a copy with command-line overrides applied (None leaves a value alone)."""
        server = replace(
            self.server,
            host=self.server.host if host is None else host,
            port=self.server.port if port is None else port,
        )
        storage = self.storage if data_dir is None else replace(self.storage, data_dir=data_dir)
        log = self.log if log_level is None else replace(self.log, level=log_level)
        return replace(self, server=server, storage=storage, log=log)


_CONFIG = TypeAdapter(Config)


def reused_token(admin: str, metrics: str, keys: Iterable[tuple[str, str]]) -> str | None:
    """Why `[admin] token` (`admin`) or `[metrics] token` (`metrics`) cannot be used beside
    the API keys `keys` ((hex SHA-256 of a key, where that key is kept)), or None.

    An admin token that is also a key makes the key's holder an admin of every project; a
    metrics token that is one shows the key's holder every project's totals. A metrics token
    equal to the admin token is refused too: it adds nothing (the admin token opens /metrics
    already), and a scraper given it could reset every project. Keys revoked count: their
    holders still know them. The message names the settings and where the key is kept, never
    a token."""
    if admin and admin == metrics:
        return (
            "metrics.token: is the admin token: a scraper given it could also reset every "
            "project; leave metrics.token empty (the admin token opens /metrics too) or give "
            "it a token of its own"
        )
    digests = {_token_digest(t): name for name, t in (("admin", admin), ("metrics", metrics)) if t}
    for digest, where in keys:
        name = digests.get(digest)
        if name == "admin":
            return (
                f"admin.token: is also an API key ({where}): whoever holds that key would be "
                "an admin of every project; give the admin API a token of its own"
            )
        if name == "metrics":
            return (
                f"metrics.token: is also an API key ({where}): whoever holds that key would "
                "read every project's totals at /metrics; give it a token of its own"
            )
    return None


def _token_digest(token: str) -> str:
    # As a presented key is hashed (api/auth.py).
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


CONFIG_ENV = "FILESD_CONFIG"
CONFIG_IN_CWD = "filesd.toml"


def find_config(
    explicit: Path | None, environ: Mapping[str, str], cwd: Path
) -> tuple[Path | None, str]:
    """The configuration file to read and why it is that one: `--config` (`explicit`), else
    the file `FILESD_CONFIG` names (a missing one is `load_config`'s error, not a fallback),
    else `filesd.toml` in the working directory when there is one, else `(None, "")`: the
    defaults. An empty `FILESD_CONFIG` counts as unset."""
    if explicit is not None:
        return explicit, "--config"
    if named := environ.get(CONFIG_ENV, ""):
        return Path(named), CONFIG_ENV
    if (cwd / CONFIG_IN_CWD).is_file():
        return cwd / CONFIG_IN_CWD, "the working directory"
    return None, ""


def load_config(path: Path | None) -> Config:
    """Read and validate a TOML file; `None` gives the defaults (data_dir relative to the cwd)."""
    if path is None:
        return parse_config({}, base_dir=Path.cwd())
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return parse_config(data, base_dir=path.resolve().parent)


def parse_config(data: Mapping[str, Any], *, base_dir: Path) -> Config:
    """Validate a parsed TOML document; relative paths are resolved against `base_dir`."""
    try:
        return _CONFIG.validate_python(data, context={"base_dir": base_dir})
    except ValidationError as error:
        raise _config_error(error) from None


# --- refusals, worded by the key they are about --------------------------------------------

# bool before int: bool is a subclass of int, and `true` is not an integer here.
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (tuple, "an array"),
    (dict, "a table"),
)
# What a value of the wrong type should have been, by pydantic's error type.
_EXPECTED = {
    "int_type": "an integer",
    "string_type": "a string",
    "bool_type": "a boolean",
    "float_type": "a float",
    "tuple_type": "an array",
    "list_type": "an array",
    "dict_type": "a table",
    "dataclass_type": "a table",
}


def _type_name(value: object) -> str:
    return next((name for t, name in _TYPE_NAMES if isinstance(value, t)), type(value).__name__)


def _config_error(error: ValidationError) -> ConfigError:
    """The `ConfigError` for the first problem: an unknown key before anything else."""
    problems = error.errors(include_url=False)
    unknown = [p for p in problems if p["type"] == "unexpected_keyword_argument"]
    problem = (unknown or problems)[0]
    path = _key(problem["loc"])
    kind = problem["type"]
    if kind == "config":
        context: dict[str, Any] = dict(problem.get("ctx") or {})
        if context["whole"]:
            return ConfigError(context["message"])
        where = _join(path, context["at"])
        return ConfigError(f"{where}: {context['message']}")
    if kind == "unexpected_keyword_argument":
        allowed = ", ".join(sorted(_allowed(problem["loc"][:-1])))
        return ConfigError(f"{path}: unknown key (allowed: {allowed})")
    if kind in _EXPECTED:
        return ConfigError(
            f"{path}: expected {_EXPECTED[kind]}, got {_type_name(problem['input'])}"
        )
    return ConfigError(f"{path}: {problem['msg']}")


def _key(loc: tuple[int | str, ...]) -> str:
    """`('auth', 'keys', 0, 'project')` -> `auth.keys[0].project`."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif not _is_validator_step(part):
            key = _join(key, part)
    return key


def _is_validator_step(part: str) -> bool:
    # pydantic names some steps of a validation in the location (a function it ran, a union
    # member it tried); they are not keys of the file.
    return part.startswith(("function-", "function[")) or "[" in part


def _join(path: str, key: str) -> str:
    if not key:
        return path
    if not path or key.startswith("["):
        return path + key
    return f"{path}.{key}"


def _allowed(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    """The keys the table at `loc` may hold: its dataclass's fields."""
    table: Any = Config
    for part in loc:
        if isinstance(part, str) and _is_validator_step(part):
            continue
        if isinstance(part, int):
            table = _element(table)
            continue
        hints = typing.get_type_hints(table)
        table = _unwrap(hints[part])
    if table is ApiKey:
        return ApiKey.toml_keys
    return tuple(f.name for f in dataclasses.fields(table))


def _unwrap(hint: Any) -> Any:
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _element(hint: Any) -> Any:
    return _unwrap(typing.get_args(_unwrap(hint))[0])


__all__ = [
    "BATCH_UPSTREAM_HELP",
    "DEFAULT_PURPOSES",
    "LOG_LEVELS",
    "AdminConfig",
    "ApiKey",
    "AuthConfig",
    "BatchesConfig",
    "Config",
    "ConfigError",
    "FilesConfig",
    "LimitsConfig",
    "LogConfig",
    "MetricsConfig",
    "S3Config",
    "ServerConfig",
    "StorageConfig",
    "TestingConfig",
    "UiConfig",
    "load_config",
    "parse_config",
    "postgres_url_problem",
    "reused_token",
]
