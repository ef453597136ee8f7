"""Archives that fail fast and say why: a refused connection without retry waits, bounded retries after a
timeout or a 503, and a 401/403 naming where the credentials came from (never the values)."""

from __future__ import annotations

import pytest
import requests

import pipeline.pacs.dicomweb as dicomweb
from pipeline.pacs.connect import open_archive
from pipeline.pacs.credentials import ENV_PASSWORD, ENV_USER, load_credentials
from tests.orthanc_server import free_port


@pytest.fixture
def sleeps(monkeypatch):
    """The waits the DICOMweb archive asks for (none really taken)."""
    waited: list[float] = []
    monkeypatch.setattr(dicomweb, "sleep", waited.append)
    return waited


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(response=response)


def test_a_refused_connection_fails_without_retries(sleeps):
    port = free_port()  # nothing listens there
    with pytest.raises(ConnectionError, match="cannot connect"):
        open_archive(f"dicomweb:http://127.0.0.1:{port}/dicom-web").query_studies({})
    with pytest.raises(ConnectionError, match="association refused"):
        open_archive(f"dimse:PACS@127.0.0.1:{port}").query_studies({})
    assert sleeps == []


@pytest.mark.parametrize(
    "failure, raised, match",
    [(requests.ReadTimeout(), TimeoutError, "timed out \\(3 tries"), (_http_error(503), RuntimeError, "HTTP 503")],
)
def test_timeouts_and_busy_answers_are_retried_a_bounded_number_of_times(
    monkeypatch, sleeps, failure, raised, match
):
    archive = open_archive("dicomweb:http://127.0.0.1:1/dicom-web")
    calls = []

    def search(**kwargs):
        calls.append(kwargs)
        raise failure

    monkeypatch.setattr(archive.client, "search_for_studies", search)
    with pytest.raises(raised, match=match):
        archive.query_studies({})
    assert len(calls) == 3 and sleeps == list(dicomweb.RETRY_WAITS)


@pytest.mark.parametrize(
    "environ, status, match",
    [
        ({ENV_USER: "u", ENV_PASSWORD: "wrong-secret"}, 401, f"refused the credentials from {ENV_USER}/"),
        ({ENV_USER: "u", ENV_PASSWORD: "wrong-secret"}, 403, f"credentials from {ENV_USER}/{ENV_PASSWORD} are"),
        ({}, 401, "no credentials were given"),
    ],
)
def test_refused_credentials_name_their_source_not_their_value(monkeypatch, sleeps, environ, status, match):
    archive = open_archive("dicomweb:http://127.0.0.1:1/dicom-web", credentials=load_credentials(environ=environ))

    def store(datasets):
        raise _http_error(status)

    monkeypatch.setattr(archive.client, "store_instances", store)
    with pytest.raises(RuntimeError, match=match) as raised:
        archive.store([])
    assert "wrong-secret" not in str(raised.value) and sleeps == []


def test_a_credentials_file_is_named_as_the_source(tmp_path):
    path = tmp_path / "pacs.json"
    path.write_text('{"token": "t0ken"}')
    creds = load_credentials(path)
    assert creds.source == f"--credentials file {path}" and "t0ken" not in repr(creds)
