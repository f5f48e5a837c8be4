"""Configuration: defaults, the example file, and errors that name the key."""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from pathlib import Path
from typing import Any

import pytest

from filesd.clock import CLOCK_MAX
from filesd.config import (
    DEFAULT_PURPOSES,
    Config,
    ConfigError,
    ServerConfig,
    load_config,
    parse_config,
)
from filesd.faultrules import FaultRule
from filesd.services.settings import StoreSettings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "filesd.toml.example"


def test_defaults_need_no_file(tmp_path: Path) -> None:
    config = parse_config({}, base_dir=tmp_path)
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.storage.data_dir == tmp_path / "filesd-data"
    assert config.limits.max_file_bytes == 512 * 1024 * 1024
    assert config.files.id_format == "uuid"
    assert config.files.purposes == DEFAULT_PURPOSES
    assert config.auth.keys == ()


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "filesd.toml"
    path.parent.mkdir()
    path.write_text('[storage]\ndata_dir = "store"\n')
    assert load_config(path).storage.data_dir == tmp_path / "conf" / "store"


def test_keys_are_kept_only_as_digests(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"sk-beta").hexdigest()
    config = parse_config(
        {
            "auth": {
                "keys": [
                    {"key": "sk-alpha", "project": "alpha"},
                    {"key_sha256": digest.upper(), "project": "beta"},
                ]
            }
        },
        base_dir=tmp_path,
    )
    assert [(k.key_sha256, k.project) for k in config.auth.keys] == [
        (hashlib.sha256(b"sk-alpha").hexdigest(), "alpha"),
        (digest, "beta"),
    ]
    assert "sk-alpha" not in repr(config)
    assert len(config.auth.keys) == 2


def test_no_secret_is_in_the_reprs_of_the_settings(tmp_path: Path) -> None:
    """A repr in a log line or a traceback must not carry a password, key or token."""
    secrets = ["pg-Zq7k", "s3-Zq7k-secret", "admin-Zq7k-0123456789", "metrics-Zq7k-0123456789"]
    config = parse_config(
        {
            "storage": {
                "database": f"postgresql://filesd:{secrets[0]}@db.example/files",
                "s3": {"access_key_id": "AKIAEXAMPLE", "secret_access_key": secrets[1]},
            },
            "admin": {"token": secrets[2]},
            "metrics": {"token": secrets[3]},
        },
        base_dir=tmp_path,
    )
    settings = StoreSettings.from_config(config)
    for shown in (repr(config), repr(settings), repr(settings.backends)):
        assert not [secret for secret in secrets if secret in shown], shown


def test_overrides_replace_only_what_is_given(tmp_path: Path) -> None:
    config = parse_config({"server": {"port": 9000}}, base_dir=tmp_path)
    assert config.with_overrides(host="::1").server == dataclasses.replace(
        config.server, host="::1"
    )
    assert config.with_overrides(port=0).server.port == 0
    assert config.with_overrides(data_dir=tmp_path / "x").storage.data_dir == tmp_path / "x"
    assert config.with_overrides() == config


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"sever": {}}, "sever: unknown key"),
        ({"server": {"prot": 1}}, "server.prot: unknown key"),
        ({"server": {"port": "8080"}}, "server.port: expected an integer, got a string"),
        ({"server": {"port": True}}, "server.port: expected an integer, got a boolean"),
        ({"server": {"port": 70000}}, "server.port: must be between 0 and 65535"),
        ({"server": {"host": ""}}, "server.host: must not be empty"),
        ({"server": []}, "server: expected a table, got an array"),
        ({"storage": {"data_dir": 1}}, "storage.data_dir: expected a string, got an integer"),
        ({"limits": {"max_file_bytes": 0}}, "limits.max_file_bytes: must be at least 1"),
        ({"limits": {"max_file_bytes": 1.5}}, "limits.max_file_bytes: expected an integer"),
        ({"files": {"id_format": "ulid"}}, "files.id_format: must be one of"),
        ({"files": {"purposes": []}}, "files.purposes: must list at least one purpose"),
        ({"files": {"purposes": ["a", 1]}}, "files.purposes: expected an array"),
        ({"auth": {"keys": {}}}, "auth.keys: expected an array of tables"),
        ({"auth": {"keys": [{"key": "k"}]}}, "auth.keys[0].project: required"),
        ({"auth": {"keys": [{"project": "p"}]}}, "auth.keys[0]: set exactly one of"),
        (
            {"auth": {"keys": [{"key": "k", "key_sha256": "0" * 64, "project": "p"}]}},
            "auth.keys[0]: set exactly one of",
        ),
        ({"auth": {"keys": [{"key_sha256": "xyz", "project": "p"}]}}, "auth.keys[0].key_sha256"),
        ({"auth": {"keys": [{"key": "k", "project": "p", "role": "x"}]}}, "auth.keys[0].role"),
        (
            {"auth": {"keys": [{"key": "k", "project": "p"}, {"key": "k", "project": "q"}]}},
            "auth.keys[1]: the same key is configured twice",
        ),
        ({"server": {"header_timeout": 0}}, "server.header_timeout: must be a finite number"),
        ({"server": {"header_timeout": "10"}}, "server.header_timeout: expected seconds"),
        ({"server": {"keepalive_timeout": True}}, "server.keepalive_timeout: expected seconds"),
        ({"server": {"keepalive_timeout": float("inf")}}, "server.keepalive_timeout: must be"),
        ({"server": {"header_timeout": float("nan")}}, "server.header_timeout: must be"),
        ({"server": {"max_connections": 0}}, "server.max_connections: must be at least 1"),
        ({"limits": {"min_body_rate": -1}}, "limits.min_body_rate: must be at least 0"),
        (
            {"limits": {"max_concurrent_uploads": 4, "max_concurrent_uploads_per_project": 5}},
            "limits.max_concurrent_uploads_per_project: must not exceed",
        ),
        ({"testing": {"frozen_time": float("nan")}}, "testing.frozen_time: expected Unix seconds"),
        ({"testing": {"frozen_time": float("inf")}}, "testing.frozen_time: expected Unix seconds"),
        # Past year 9999 times overflow the stored integers: every request would be a 500.
        ({"testing": {"frozen_time": 1e19}}, "testing.frozen_time: expected Unix seconds from 0"),
        ({"testing": {"frozen_time": 1e300}}, "testing.frozen_time: expected Unix seconds"),
        ({"testing": {"frozen_time": CLOCK_MAX + 1}}, f"to {CLOCK_MAX} (the end of year 9999)"),
        ({"testing": {"frozen_time": -1}}, "testing.frozen_time: expected Unix seconds from 0"),
        (
            {"testing": {"faults": [{"status": 503, "retry_after": float("nan")}]}},
            "testing.faults[0].retry_after: must be a finite number",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base_dir=tmp_path)
    assert message in str(info.value)


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def _leaf_keys(value: Any, prefix: str = "") -> set[str]:
    """Dotted names of every setting in a config dataclass or TOML document."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        keys: set[str] = set()
        for name, sub in value.items():
            keys |= _leaf_keys(sub, f"{prefix}{name}.")
        return keys
    if isinstance(value, list | tuple) and value and isinstance(value[0], dict):
        return set().union(*(_leaf_keys(entry, prefix[:-1] + "[].") for entry in value))
    return {prefix[:-1]}


def test_example_parses_and_documents_every_key(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    assert isinstance(config, Config)
    doc = tomllib.loads(EXAMPLE.read_text())
    documented = _leaf_keys(doc)
    # Every setting the parser has, except derived ones, appears in the example...
    # Settings with no default, and the fault rules, are shown commented out (an example to
    # copy must not seed ids, freeze time or inject faults).
    known = _leaf_keys(Config()) - {"auth.keys", "testing.faults"}
    known -= {"testing.id_seed", "testing.frozen_time"}
    assert known <= documented
    text = EXAMPLE.read_text()
    for key_field in ("key", "key_sha256", "project"):
        assert f"# {key_field} = " in text, key_field
    assert "# [[auth.keys]]" in text
    assert "# id_seed = " in text and "# frozen_time = " in text
    assert "# [[testing.faults]]" in text
    for rule_field in dataclasses.fields(FaultRule):
        if rule_field.name != "storage":  # one action per rule: shown in the comment above it
            assert f"# {rule_field.name} = " in text, rule_field.name
    assert 'storage = "full"' in text
    # ...and the example's values of the plain settings are the defaults.
    defaults = parse_config({}, base_dir=EXAMPLE.parent)
    assert config.server == defaults.server
    assert config.storage == defaults.storage
    assert config.limits == defaults.limits
    assert config.files == defaults.files
    # As shipped it is exactly no configuration: no keys switched on (a copy would otherwise
    # turn open mode off and accept a key anyone can read here), no admin token, no faults.
    assert config == defaults
    assert config.auth.keys == ()


@pytest.mark.parametrize("written", ["nan", "1e19", "1e300", "-0.5"])
def test_a_frozen_time_the_clock_cannot_show_in_a_toml_file_is_refused(
    tmp_path: Path, written: str
) -> None:
    path = tmp_path / "filesd.toml"
    path.write_text(f"[testing]\nfrozen_time = {written}\n")
    with pytest.raises(ConfigError, match=r"testing\.frozen_time: expected Unix seconds"):
        load_config(path)


def test_the_last_second_of_year_9999_is_a_frozen_time(tmp_path: Path) -> None:
    config = parse_config({"testing": {"frozen_time": CLOCK_MAX}}, base_dir=tmp_path)
    assert config.testing.frozen_time == CLOCK_MAX


SPILLS = 'an "@" that does not end the user name and password'
UNREADABLE = "its host or port cannot be read"


@pytest.mark.parametrize(
    ("database", "problem"),
    [
        ("postgresql://filesd:Zq@7k@db.example:5432/files", SPILLS),
        ("postgresql://filesd:12/Zq7k@db.example:5432/files", SPILLS),
        ("postgresql://filesd:Zq/7k@db.example:5432/files", UNREADABLE),
        ("postgresql://filesd:Zq?7k@db.example/files", UNREADABLE),
        ("postgresql://filesd:Zq#7k@db.example/files", UNREADABLE),
        ("postgresql://filesd:Zq[7k@db.example/files", UNREADABLE),
        ("postgresql://filesd@db.example:port/files", UNREADABLE),
    ],
)
def test_a_database_url_whose_password_spills_is_refused_unshown(
    tmp_path: Path, database: str, problem: str
) -> None:
    """A password with an unencoded @ / ? # [ would be read into the host or database, which
    messages show; the URL is never shown, not a piece of it."""
    with pytest.raises(ConfigError) as info:
        parse_config({"storage": {"database": database}}, base_dir=tmp_path)
    assert str(info.value) == (
        f"storage.database: not a usable PostgreSQL URL ({problem}); in the user name and "
        'password, percent-encode "@", "/", "?", "#", "[" and "]" (e.g. %40 for "@")'
    )


def test_an_s3_endpoint_with_credentials_in_it_is_refused_unshown(tmp_path: Path) -> None:
    """The endpoint's URL is in the messages of a failed S3 call: no secret may ride in it."""
    s3 = {"endpoint": "http://AKIAEXAMPLE:Zq7k-secret@127.0.0.1:9000"}
    with pytest.raises(ConfigError) as info:
        parse_config({"storage": {"s3": s3}}, base_dir=tmp_path)
    assert str(info.value) == (
        "storage.s3.endpoint: must not hold a user or password: set access_key_id and "
        "secret_access_key instead"
    )


def test_a_percent_encoded_password_is_a_database_url(tmp_path: Path) -> None:
    url = "postgresql://filesd:p%40s%2Fs%3F%23@db.example:5432/files?sslmode=require"
    config = parse_config({"storage": {"database": url}}, base_dir=tmp_path)
    assert config.storage.database == url


ADMIN_TOKEN = "admin-token-0123456789"
KEY = "sk-tenant-key-0123456789"


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            {"admin": {"token": KEY}, "auth": {"keys": [{"key": KEY, "project": "p"}]}},
            "admin.token: is also an API key (auth.keys[0]): whoever holds that key would be "
            "an admin of every project",
        ),
        (
            {
                "admin": {"token": KEY},
                "auth": {
                    "keys": [
                        {"key": "sk-other-key-0123456789", "project": "q"},
                        {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "project": "p"},
                    ]
                },
            },
            "admin.token: is also an API key (auth.keys[1])",
        ),
        (
            {"metrics": {"token": KEY}, "auth": {"keys": [{"key": KEY, "project": "p"}]}},
            "metrics.token: is also an API key (auth.keys[0]): whoever holds that key would "
            "read every project's totals",
        ),
        (
            {"admin": {"token": ADMIN_TOKEN}, "metrics": {"token": ADMIN_TOKEN}},
            "metrics.token: is the admin token: a scraper given it could also reset",
        ),
    ],
    ids=[
        "admin-is-a-key",
        "admin-is-a-key-given-by-digest",
        "metrics-is-a-key",
        "metrics-is-admin",
    ],
)
def test_a_token_that_is_a_key_or_the_admin_token_is_refused_unshown(
    tmp_path: Path, tables: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tables, base_dir=tmp_path)
    assert str(info.value).startswith(message)
    assert KEY not in str(info.value) and ADMIN_TOKEN not in str(info.value)


def test_tokens_of_their_own_are_taken(tmp_path: Path) -> None:
    config = parse_config(
        {
            "admin": {"token": ADMIN_TOKEN},
            "metrics": {"token": "metrics-token-0123456789"},
            "auth": {"keys": [{"key": KEY, "project": "p"}]},
        },
        base_dir=tmp_path,
    )
    assert config.admin.token == ADMIN_TOKEN


def test_the_allowed_keys_are_the_dataclass_fields(tmp_path: Path) -> None:
    """Adding a field to a settings dataclass makes its key accepted; the error lists them."""
    with pytest.raises(ConfigError) as info:
        parse_config({"server": {"nope": 1}}, base_dir=tmp_path)
    allowed = ", ".join(sorted(f.name for f in dataclasses.fields(ServerConfig)))
    assert f"(allowed: {allowed})" in str(info.value)
    config = parse_config(
        {"server": {"header_timeout": 2.5, "keepalive_timeout": 5, "max_connections": 10}},
        base_dir=tmp_path,
    )
    assert config.server.header_timeout == 2.5 and config.server.keepalive_timeout == 5.0
    assert config.server.max_connections == 10
    limits = parse_config({"limits": {"max_concurrent_uploads": 9}}, base_dir=tmp_path).limits
    assert limits.max_concurrent_uploads_per_project == 0 and limits.min_body_rate == 1024
