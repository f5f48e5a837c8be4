"""Configuration: one TOML file, every key optional, validated strictly.

`parse_config` is pure: it turns an already-parsed TOML mapping into a frozen `Config`, or raises
`ConfigError` with a message that names the offending key. Unknown keys and wrong types are errors,
never ignored, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from .faultrules import FaultRule, FaultRuleError, parse_fault_rule
from .values import is_finite_number, is_instance

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
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_T = TypeVar("_T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # Seconds a client has to send a request's headers: from the connection's start, or from
    # the first byte of a later request on a kept-alive connection (slow-header clients).
    header_timeout: float = 10.0
    # Seconds an idle kept-alive connection stays open (aiohttp's own default is an hour).
    keepalive_timeout: float = 75.0
    # Open connections at most; beyond it a new connection gets a 503 and is closed at once.
    max_connections: int = 1024


@dataclass(frozen=True)
class S3Config:
    # "" = AWS (or AWS_ENDPOINT_URL); e.g. "http://127.0.0.1:9000" for a local server.
    endpoint: str = ""
    region: str = "us-east-1"
    # "" = the standard AWS environment variables and credential chain.
    access_key_id: str = ""
    secret_access_key: str = ""
    # true: content is a 307 to a short-lived presigned URL.
    redirect_downloads: bool = False


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path = Path("filesd-data")
    sweep_interval: int = 60
    deleted_retention: int = 30 * 24 * 3600
    # "" = SQLite in data_dir; else "postgresql://user@host:5432/dbname".
    database: str = ""
    # "" = data_dir/blobs; else "s3://bucket" or "s3://bucket/prefix".
    blobs: str = ""
    # Seconds an instance counts as alive after its last heartbeat (sent every third of it):
    # how long a killed instance's leases, claims and completions wait before others take over.
    lease_seconds: int = 30
    s3: S3Config = S3Config()

    @property
    def bucket(self) -> tuple[str, str] | None:
        """(bucket, prefix) of `blobs` when it names S3, else None."""
        if not self.blobs:
            return None
        bucket, _, prefix = self.blobs.removeprefix("s3://").partition("/")
        return bucket, prefix.strip("/")


@dataclass(frozen=True)
class LimitsConfig:
    max_file_bytes: int = 512 * 1024 * 1024
    max_upload_bytes: int = 8 * 1024 * 1024 * 1024
    max_part_bytes: int = 64 * 1024 * 1024
    # Parts one upload may have (each costs a file, a directory fsync and a row).
    max_upload_parts: int = 10_000
    max_concurrent_uploads: int = 64
    body_timeout: int = 60
    # Per project; 0 means no limit.
    max_files_per_project: int = 0
    max_bytes_per_project: int = 0
    # Bytes/s a request body must keep up, over each window of `body_timeout` seconds after its
    # first `body_timeout` seconds (bodies.py); 0: off.
    min_body_rate: int = 1024
    # Upload slots one project may hold, always; 0: half of max_concurrent_uploads (at least
    # 1) while more than one project has keys (not for a single tenant, nor in open mode,
    # where any token is a project).
    max_concurrent_uploads_per_project: int = 0


@dataclass(frozen=True)
class FilesConfig:
    id_format: str = "uuid"
    purposes: tuple[str, ...] = DEFAULT_PURPOSES
    default_expires_after: Mapping[str, int] = field(
        default_factory=lambda: dict(DEFAULT_EXPIRES_AFTER)
    )
    refuse_downloads: bool = False
    refused_download_purposes: tuple[str, ...] = OPENAI_REFUSED_DOWNLOADS

    @property
    def download_refused(self) -> frozenset[str]:
        """Purposes whose files cannot be downloaded (none unless `refuse_downloads`)."""
        return frozenset(self.refused_download_purposes if self.refuse_downloads else ())


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class AdminConfig:
    """The admin API (/admin/...): off unless `token` is set."""

    token: str = ""
    journal_size: int = 1000


@dataclass(frozen=True)
class MetricsConfig:
    """GET /metrics: keyless in open mode; once API keys exist (in the file or made in the
    database) it needs this token or the admin token, as its totals span every project."""

    token: str = ""


@dataclass(frozen=True)
class TestingConfig:
    """For test runs: reproducible ids, a frozen clock, faults from the start."""

    id_seed: int | None = None
    frozen_time: float | None = None
    faults: tuple[FaultRule, ...] = ()


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    access_log: bool = True


@dataclass(frozen=True)
class ApiKey:
    """A configured key, kept only as the SHA-256 digest of the secret."""

    key_sha256: str
    project: str


@dataclass(frozen=True)
class AuthConfig:
    # Whether the server runs open is the running `Authenticator`'s to say (keys made with
    # `filesd keys create` live in the database, not here), so there is no `open_mode` here.
    keys: tuple[ApiKey, ...] = ()


@dataclass(frozen=True)
class UiConfig:
    """The web console (/ui/) and the page `GET /` shows a browser."""

    enabled: bool = True


BATCH_UPSTREAM_HELP = (
    'batches.upstream: expected "" (off), "echo" (the built-in model) or the base URL of an '
    'OpenAI-compatible API, e.g. "http://127.0.0.1:11434/v1"'
)


@dataclass(frozen=True)
class BatchesConfig:
    """The Batch API: where its requests go, and how hard they are pushed."""

    # "" = off (POST /v1/batches is a 400 saying how to turn it on); "echo" = the built-in
    # deterministic model; else an OpenAI-compatible base URL ("https://host/v1").
    upstream: str = ""
    # The bearer token for the upstream, or the name of an environment variable holding it.
    api_key: str = field(default="", repr=False)
    api_key_env: str = ""
    # Requests in flight at once, over all batches of this instance.
    concurrency: int = 8
    # Batches driven at once by this instance (each holds its input file open while it runs).
    max_running: int = 4
    # Seconds one upstream request may take (each attempt).
    request_timeout: float = 600.0
    # Seconds the upstream may stay silent while sending its answer (each read): a slow drip
    # cannot hold a request for the whole request_timeout.
    read_timeout: float = 60.0
    # Bytes of one upstream answer at most; a larger one is a failed request.
    max_response_bytes: int = 8 * 1024 * 1024
    # Attempts after the first, on 429, 5xx and network errors.
    max_retries: int = 5
    # Seconds before the first retry (doubling after each, capped at 60; Retry-After wins).
    retry_backoff: float = 1.0
    # OpenAI's limits on an input file.
    max_requests: int = 50_000
    max_input_bytes: int = 200 * 1024 * 1024
    # The model named in a request -> the model sent upstream (others pass through).
    models: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
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
    _check_keys(data, "", _names(Config))

    server = _table(data, "server")
    _check_keys(server, "server.", _names(ServerConfig))
    host = _get(server, "server.host", str, ServerConfig.host)
    if not host:
        raise ConfigError("server.host: must not be empty")
    port = _get(server, "server.port", int, ServerConfig.port)
    if not 0 <= port <= 65535:
        raise ConfigError(f"server.port: must be between 0 and 65535, got {port}")
    header_timeout = _get_seconds(server, "server.header_timeout", ServerConfig.header_timeout)
    keepalive_timeout = _get_seconds(
        server, "server.keepalive_timeout", ServerConfig.keepalive_timeout
    )
    max_connections = _get(server, "server.max_connections", int, ServerConfig.max_connections)
    if max_connections < 1:
        raise ConfigError(f"server.max_connections: must be at least 1, got {max_connections}")

    storage = _table(data, "storage")
    _check_keys(storage, "storage.", _names(StorageConfig))
    data_dir_raw = _get(storage, "storage.data_dir", str, str(StorageConfig.data_dir))
    if not data_dir_raw:
        raise ConfigError("storage.data_dir: must not be empty")
    data_dir = Path(data_dir_raw).expanduser()
    if not data_dir.is_absolute():
        data_dir = base_dir / data_dir
    sweep_interval = _get(storage, "storage.sweep_interval", int, StorageConfig.sweep_interval)
    if sweep_interval < 1:
        raise ConfigError(
            f"storage.sweep_interval: must be at least 1 second, got {sweep_interval}"
        )
    retention = _get(storage, "storage.deleted_retention", int, StorageConfig.deleted_retention)
    if retention < 0:
        raise ConfigError(f"storage.deleted_retention: must be 0 or more seconds, got {retention}")
    database = _get(storage, "storage.database", str, StorageConfig.database)
    if database and not database.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            'storage.database: expected "" (SQLite in data_dir) or a URL '
            '"postgresql://user@host:5432/dbname"'
        )
    blobs = _get(storage, "storage.blobs", str, StorageConfig.blobs)
    if blobs and (not blobs.startswith("s3://") or not blobs.removeprefix("s3://").split("/")[0]):
        raise ConfigError(
            'storage.blobs: expected "" (data_dir/blobs), "s3://bucket" or "s3://bucket/prefix"'
        )
    lease_seconds = _get(storage, "storage.lease_seconds", int, StorageConfig.lease_seconds)
    if lease_seconds < 3:
        raise ConfigError(f"storage.lease_seconds: must be at least 3, got {lease_seconds}")
    s3_table = _table(storage, "s3")
    _check_keys(s3_table, "storage.s3.", _names(S3Config))
    s3 = S3Config(
        endpoint=_get(s3_table, "storage.s3.endpoint", str, S3Config.endpoint),
        region=_get(s3_table, "storage.s3.region", str, S3Config.region),
        access_key_id=_get(s3_table, "storage.s3.access_key_id", str, S3Config.access_key_id),
        secret_access_key=_get(
            s3_table, "storage.s3.secret_access_key", str, S3Config.secret_access_key
        ),
        redirect_downloads=_get(
            s3_table, "storage.s3.redirect_downloads", bool, S3Config.redirect_downloads
        ),
    )
    if s3.endpoint and not s3.endpoint.startswith(("http://", "https://")):
        raise ConfigError("storage.s3.endpoint: expected an http:// or https:// URL")

    limits = _table(data, "limits")
    positive = (
        "max_file_bytes",
        "max_upload_bytes",
        "max_part_bytes",
        "max_upload_parts",
        "max_concurrent_uploads",
        "body_timeout",
    )
    _check_keys(limits, "limits.", _names(LimitsConfig))
    sizes = {
        name: _get(limits, f"limits.{name}", int, getattr(LimitsConfig, name))
        for name in _names(LimitsConfig)
    }
    for name, value in sizes.items():
        if value < (1 if name in positive else 0):
            minimum = 1 if name in positive else "0 (no limit)"
            raise ConfigError(f"limits.{name}: must be at least {minimum}, got {value}")
    share = sizes["max_concurrent_uploads_per_project"]
    if share > sizes["max_concurrent_uploads"]:
        raise ConfigError(
            "limits.max_concurrent_uploads_per_project: must not exceed "
            f"limits.max_concurrent_uploads ({sizes['max_concurrent_uploads']}), got {share}"
        )

    files = _table(data, "files")
    _check_keys(files, "files.", _names(FilesConfig))
    id_format = _get(files, "files.id_format", str, FilesConfig.id_format)
    if id_format not in ID_FORMATS:
        raise ConfigError(f"files.id_format: must be one of {list(ID_FORMATS)}, got {id_format!r}")
    purposes = _get_str_list(files, "files.purposes", DEFAULT_PURPOSES)
    if not purposes:
        raise ConfigError("files.purposes: must list at least one purpose")
    default_expires_after = _parse_expiry_defaults(files, purposes)
    refuse_downloads = _get(files, "files.refuse_downloads", bool, FilesConfig.refuse_downloads)
    refused = _get_str_list(files, "files.refused_download_purposes", OPENAI_REFUSED_DOWNLOADS)

    auth = _table(data, "auth")
    _check_keys(auth, "auth.", _names(AuthConfig))
    keys = _parse_keys(auth.get("keys", []))

    log_table = _table(data, "log")
    _check_keys(log_table, "log.", _names(LogConfig))
    level = _get(log_table, "log.level", str, LogConfig.level).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log.level: must be one of {list(LOG_LEVELS)}, got {level!r}")
    access_log = _get(log_table, "log.access_log", bool, LogConfig.access_log)

    admin = _table(data, "admin")
    _check_keys(admin, "admin.", _names(AdminConfig))
    admin_token = _get(admin, "admin.token", str, "")
    if admin_token and len(admin_token) < 16:
        raise ConfigError("admin.token: use at least 16 characters")
    journal_size = _get(admin, "admin.journal_size", int, AdminConfig.journal_size)
    if journal_size < 0:
        raise ConfigError(f"admin.journal_size: must be 0 or more, got {journal_size}")

    metrics = _table(data, "metrics")
    _check_keys(metrics, "metrics.", _names(MetricsConfig))
    metrics_token = _get(metrics, "metrics.token", str, "")
    if metrics_token and len(metrics_token) < 16:
        raise ConfigError("metrics.token: use at least 16 characters")

    testing = _table(data, "testing")
    _check_keys(testing, "testing.", _names(TestingConfig))
    id_seed = _get(testing, "testing.id_seed", int, None)
    frozen = testing.get("frozen_time")
    if frozen is not None and not is_finite_number(frozen):
        raise ConfigError("testing.frozen_time: expected Unix seconds (a finite number)")
    raw_faults = testing.get("faults", [])
    if not isinstance(raw_faults, list):
        raise ConfigError("testing.faults: expected an array of tables")
    try:
        faults = tuple(
            parse_fault_rule(rule, f"testing.faults[{i}]") for i, rule in enumerate(raw_faults)
        )
    except FaultRuleError as e:
        raise ConfigError(str(e)) from None

    return Config(
        server=ServerConfig(
            host=host,
            port=port,
            header_timeout=header_timeout,
            keepalive_timeout=keepalive_timeout,
            max_connections=max_connections,
        ),
        storage=StorageConfig(
            data_dir=data_dir,
            sweep_interval=sweep_interval,
            deleted_retention=retention,
            database=database,
            blobs=blobs,
            lease_seconds=lease_seconds,
            s3=s3,
        ),
        limits=LimitsConfig(**sizes),
        files=FilesConfig(
            id_format=id_format,
            purposes=purposes,
            default_expires_after=default_expires_after,
            refuse_downloads=refuse_downloads,
            refused_download_purposes=refused,
        ),
        auth=AuthConfig(keys=keys),
        log=LogConfig(level=level, access_log=access_log),
        admin=AdminConfig(token=admin_token, journal_size=journal_size),
        metrics=MetricsConfig(token=metrics_token),
        testing=TestingConfig(
            id_seed=id_seed,
            frozen_time=None if frozen is None else float(frozen),
            faults=faults,
        ),
        batches=_parse_batches(data),
        ui=_parse_ui(data),
    )


def _parse_ui(data: Mapping[str, Any]) -> UiConfig:
    table = _table(data, "ui")
    _check_keys(table, "ui.", _names(UiConfig))
    return UiConfig(enabled=_get(table, "ui.enabled", bool, UiConfig.enabled))


def _parse_batches(data: Mapping[str, Any]) -> BatchesConfig:
    table = _table(data, "batches")
    _check_keys(table, "batches.", _names(BatchesConfig))
    upstream = _get(table, "batches.upstream", str, BatchesConfig.upstream).rstrip("/")
    if upstream not in ("", "echo") and not upstream.startswith(("http://", "https://")):
        raise ConfigError(BATCH_UPSTREAM_HELP)
    concurrency = _get(table, "batches.concurrency", int, BatchesConfig.concurrency)
    if not 1 <= concurrency <= 1024:
        raise ConfigError(f"batches.concurrency: must be between 1 and 1024, got {concurrency}")
    max_running = _get(table, "batches.max_running", int, BatchesConfig.max_running)
    if not 1 <= max_running <= 1024:
        raise ConfigError(f"batches.max_running: must be between 1 and 1024, got {max_running}")
    max_retries = _get(table, "batches.max_retries", int, BatchesConfig.max_retries)
    if max_retries < 0:
        raise ConfigError(f"batches.max_retries: must be 0 or more, got {max_retries}")
    retry_backoff = table.get("retry_backoff", BatchesConfig.retry_backoff)
    if not is_finite_number(retry_backoff) or retry_backoff < 0:
        raise ConfigError("batches.retry_backoff: must be a number of seconds, 0 or more")
    limits = {
        name: _get(table, f"batches.{name}", int, getattr(BatchesConfig, name))
        for name in ("max_requests", "max_input_bytes", "max_response_bytes")
    }
    for name, value in limits.items():
        if value < 1:
            raise ConfigError(f"batches.{name}: must be at least 1, got {value}")
    models_table = _table(table, "models")
    models = {name: _get(models_table, f"batches.models.{name}", str, "") for name in models_table}
    for name, target in models.items():
        if not target:
            raise ConfigError(f"batches.models.{name}: must name a model")
    return BatchesConfig(
        upstream=upstream,
        api_key=_get(table, "batches.api_key", str, BatchesConfig.api_key),
        api_key_env=_get(table, "batches.api_key_env", str, BatchesConfig.api_key_env),
        concurrency=concurrency,
        max_running=max_running,
        request_timeout=_get_seconds(
            table, "batches.request_timeout", BatchesConfig.request_timeout
        ),
        read_timeout=_get_seconds(table, "batches.read_timeout", BatchesConfig.read_timeout),
        max_retries=max_retries,
        retry_backoff=float(retry_backoff),
        models=models,
        **limits,
    )


def _parse_expiry_defaults(files: Mapping[str, Any], purposes: tuple[str, ...]) -> dict[str, int]:
    name = "files.default_expires_after"
    if "default_expires_after" not in files:
        return dict(DEFAULT_EXPIRES_AFTER)
    table = files["default_expires_after"]
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: expected a table of purpose = seconds")
    defaults: dict[str, int] = {}
    for purpose in table:
        seconds = _get(table, f"{name}.{purpose}", int, 0)
        if purpose not in purposes:
            raise ConfigError(f"{name}.{purpose}: not one of files.purposes")
        if seconds < 0:
            raise ConfigError(f"{name}.{purpose}: must be 0 (never) or more seconds")
        if seconds:
            defaults[purpose] = seconds
    return defaults


def _parse_keys(raw: object) -> tuple[ApiKey, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"auth.keys: expected an array of tables, got {_type_name(raw)}")
    keys: list[ApiKey] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"auth.keys[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table, got {_type_name(entry)}")
        # The secret itself may be given instead of its digest.
        _check_keys(entry, f"{where}.", {"key", *_names(ApiKey)})
        project = _get(entry, f"{where}.project", str, "")
        if not project:
            raise ConfigError(f"{where}.project: required, a non-empty string")
        if ("key" in entry) == ("key_sha256" in entry):
            raise ConfigError(f"{where}: set exactly one of 'key' or 'key_sha256'")
        if "key" in entry:
            secret = _get(entry, f"{where}.key", str, "")
            if not secret:
                raise ConfigError(f"{where}.key: must not be empty")
            digest = hashlib.sha256(secret.encode()).hexdigest()
        else:
            digest = _get(entry, f"{where}.key_sha256", str, "").lower()
            if not _SHA256_HEX.fullmatch(digest):
                raise ConfigError(f"{where}.key_sha256: must be 64 hexadecimal characters")
        if digest in seen:
            raise ConfigError(f"{where}: the same key is configured twice")
        seen.add(digest)
        keys.append(ApiKey(key_sha256=digest, project=project))
    return tuple(keys)


def _table(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a table, got {_type_name(value)}")
    return value


def _names(table: type) -> tuple[str, ...]:
    """The keys a TOML table may hold: the fields of the dataclass it becomes."""
    return tuple(f.name for f in dataclasses.fields(table))


def _check_keys(table: Mapping[str, Any], prefix: str, allowed: Collection[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _get(table: Mapping[str, Any], name: str, kind: type[_T], default: _T) -> _T:
    key = name.rsplit(".", 1)[-1]
    if key not in table:
        return default
    value = table[key]
    # bool is a subclass of int in Python, but `port = true` is a mistake, not a port.
    if not is_instance(value, kind):
        raise ConfigError(f"{name}: expected {_type_name_of(kind)}, got {_type_name(value)}")
    return cast(_T, value)


def _get_seconds(table: Mapping[str, Any], name: str, default: float) -> float:
    """A duration in seconds: an integer or a float, finite and above zero."""
    key = name.rsplit(".", 1)[-1]
    if key not in table:
        return default
    value = table[key]
    if not is_instance(value, (int, float)):
        raise ConfigError(f"{name}: expected seconds (a number), got {_type_name(value)}")
    if not is_finite_number(value) or value <= 0:
        raise ConfigError(f"{name}: must be a finite number of seconds above 0, got {value}")
    return float(value)


def _get_str_list(table: Mapping[str, Any], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    key = name.rsplit(".", 1)[-1]
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name}: expected an array of non-empty strings")
    return tuple(dict.fromkeys(value))


# bool before int: bool is a subclass of int, and `true` is not an integer here.
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "an array"),
    (dict, "a table"),
)


def _type_name_of(kind: type) -> str:
    return next((name for t, name in _TYPE_NAMES if t is kind), kind.__name__)


def _type_name(value: object) -> str:
    return next((name for t, name in _TYPE_NAMES if isinstance(value, t)), type(value).__name__)
