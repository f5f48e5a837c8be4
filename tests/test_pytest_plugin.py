"""The pytest plugin, used as a user would: a sample project run by pytester."""

from __future__ import annotations

import openai
import pytest

from filesd.testing import serve

from .conftest import ALPHA_KEY

pytestmark = pytest.mark.slow

SAMPLE = """
import openai
import pytest


def test_upload_and_read(filesd):
    client = filesd.openai()
    created = client.files.create(file=("a.txt", b"hello"), purpose="batch")
    assert created.id.startswith("file-")  # from filesd_config in the ini file
    assert client.files.content(created.id).read() == b"hello"


def test_each_test_starts_empty(filesd):
    assert list(filesd.openai().files.list()) == []
    assert filesd.base_url.endswith("/v1") and filesd.api_key


def test_projects_are_isolated(filesd_server):
    a, b = filesd_server.new_project(), filesd_server.new_project()
    created = a.openai().files.create(file=b"x", purpose="batch")
    with pytest.raises(openai.NotFoundError):
        b.openai().files.retrieve(created.id)
    assert filesd_server.data_dir.is_dir() and filesd_server.url.startswith("http://127.0.0.1:")


def test_async_client(filesd):
    import asyncio

    async def run():
        async with filesd.async_openai() as client:
            created = await client.files.create(file=b"async", purpose="batch")
            return (await client.files.retrieve(created.id)).bytes

    assert asyncio.run(run()) == 5


@pytest.mark.filesd(
    testing={"faults": [{"method": "GET", "route": "/v1/files", "status": 500, "count": 1}]}
)
def test_faults_from_a_marker(filesd):
    client = filesd.openai()
    with pytest.raises(openai.InternalServerError):
        client.files.list().data
    assert client.files.list().data == []  # the rule fired once
    assert filesd.openai(max_retries=1).files.list().data == []


@pytest.mark.filesd(limits={"max_file_bytes": 10})
def test_marker_gives_a_server_of_its_own(filesd):
    with pytest.raises(openai.APIStatusError) as info:
        filesd.openai().files.create(file=b"x" * 100, purpose="batch")
    assert info.value.status_code == 413
"""


def test_fixtures_in_a_sample_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sample=SAMPLE)
    pytester.makeini('[pytest]\nfilesd_config =\n    [files]\n    id_format = "openai"\n')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=6)


def test_serve_with_configured_keys_mints_working_keys() -> None:
    keys = {"keys": [{"key": ALPHA_KEY, "project": "alpha"}]}
    with serve(auth=keys) as server:
        project = server.new_project()
        assert project.api_key != ALPHA_KEY
        with project.openai() as client:
            created = client.files.create(file=b"mine", purpose="batch")
        alpha = openai.OpenAI(base_url=server.base_url, api_key=ALPHA_KEY, max_retries=0)
        with alpha, pytest.raises(openai.NotFoundError):
            alpha.files.retrieve(created.id)
        stranger = openai.OpenAI(
            base_url=server.base_url, api_key="sk-unknown-123456", max_retries=0
        )
        with stranger, pytest.raises(openai.AuthenticationError):
            stranger.files.list()


LEFT_OPEN = """
import gc


def test_sync_client_left_open(filesd):
    assert filesd.openai().files.list().data == []  # never closed, as tests often do


async def test_async_client_left_open(filesd):
    assert (await filesd.async_openai().files.list()).data == []


def test_project_of_the_session_server_left_open(filesd_server):
    assert filesd_server.new_project().openai().files.list().data == []


def test_an_unrelated_test_that_collects_garbage():
    gc.collect()
"""


def test_the_plugin_closes_the_clients_it_made(pytester: pytest.Pytester) -> None:
    """A client a test left open is closed by the plugin, not left for the garbage collector
    to warn about in whichever test happens to collect it."""
    pytester.makepyfile(test_left_open=LEFT_OPEN)
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-q",
        "-W",
        "error::ResourceWarning",
        "-W",
        "error::pytest.PytestUnraisableExceptionWarning",
    )
    result.assert_outcomes(passed=4)


def test_without_openai_the_plugin_says_what_to_install(pytester: pytest.Pytester) -> None:
    # The import fails as it does where openai is not installed (None in sys.modules makes
    # `import openai` raise ModuleNotFoundError), before any test asks for a client.
    pytester.makeconftest("import sys\nsys.modules['openai'] = None\n")
    pytester.makepyfile(
        test_no_sdk="""
def test_the_plugin_loads_and_serves(filesd_server):
    assert filesd_server.url.startswith("http://127.0.0.1:")


def test_asking_for_a_client(filesd):
    filesd.openai()
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * ModuleNotFoundError: filesd's test clients need the `openai` package, which "
            "filesd does not install: pip install openai"
        ]
    )
