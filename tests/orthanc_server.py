"""A throw-away Orthanc (Debian packages ``orthanc`` + ``orthanc-dicomweb``) for the PACS tests.

Started once per session on 127.0.0.1 with free HTTP and DICOM ports, a temporary storage folder, the DICOMweb
plugin, HTTP basic authentication, and this test's AE titles declared as modalities (C-FIND/C-GET/C-MOVE/C-STORE).
Tests using it skip, naming the reason, where the binary or the plugin is absent.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
USER, PASSWORD = "clinseg", "test-only-password"
AET = "ORTHANC"
CALLING_AET = "CLINSEGTEST"  # the tests' DIMSE client, also the C-MOVE destination
NODE_AET = "CLINSEGNODE"  # clinseg serve in the tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


@dataclass
class Orthanc:
    """A running server: REST at ``url``, DICOMweb at ``dicomweb``, DIMSE at ``AET@127.0.0.1:dicom_port``."""

    url: str
    dicom_port: int
    move_port: int
    node_port: int
    process: subprocess.Popen

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"{AET}@127.0.0.1:{self.dicom_port}"

    def get(self, path: str, **kwargs):
        response = requests.get(f"{self.url}{path}", auth=(USER, PASSWORD), timeout=60, **kwargs)
        response.raise_for_status()
        return response

    def upload(self, paths) -> None:
        for path in paths:
            response = requests.post(
                f"{self.url}/instances", data=Path(path).read_bytes(), auth=(USER, PASSWORD), timeout=60
            )
            response.raise_for_status()

    def series_of_modality(self, modality: str) -> list[dict]:
        """Every series of ``modality`` with its main tags and instance ids."""
        response = requests.post(
            f"{self.url}/tools/find",
            auth=(USER, PASSWORD),
            timeout=60,
            json={"Level": "Series", "Query": {"Modality": modality}, "Expand": True},
        )
        response.raise_for_status()
        return response.json()

    def instance_file(self, orthanc_id: str) -> bytes:
        return self.get(f"/instances/{orthanc_id}/file").content

    def clear(self) -> None:
        """Delete every patient (a clean archive for the next test)."""
        for patient in self.get("/patients").json():
            requests.delete(
                f"{self.url}/patients/{patient}", auth=(USER, PASSWORD), timeout=60
            ).raise_for_status()


def wait_for(condition, seconds: float = 180, *, explain=None) -> bool:
    """Poll ``condition`` until true; after ``seconds`` fail with ``explain()`` (what the node was doing), so a
    CI log's one-line summary shows where it was stuck."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not condition():
        time.sleep(0.3)
    if condition():
        return True
    raise AssertionError(f"not true after {seconds:.0f} s: {explain() if explain else ''}")


def thread_frames(thread: threading.Thread, last: int = 6) -> str:
    """The innermost ``last`` frames of ``thread`` as ``file:line function`` (``dead`` once it ended)."""
    frame = sys._current_frames().get(thread.ident) if thread.is_alive() else None
    if frame is None:
        return "dead"
    stack = traceback.extract_stack(frame)[-last:]
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(stack))


def start_orthanc(workdir: Path) -> Orthanc:
    binary = shutil.which("Orthanc")
    plugin = _plugin()
    if binary is None:
        pytest.skip("Orthanc is not installed (Debian package orthanc; .ci/run installs it)")
    if plugin is None:
        pytest.skip(
            f"the Orthanc DICOMweb plugin is not installed (Debian package orthanc-dicomweb; looked in "
            f"{', '.join(map(str, PLUGIN_DIRS))})"
        )
    http_port, dicom_port, move_port, node_port = (free_port() for _ in range(4))
    storage = workdir / "storage"
    storage.mkdir(parents=True)
    config = {
        "Name": "clinseg-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {
            "clinsegtest": [CALLING_AET, "127.0.0.1", move_port],
            "clinsegnode": [NODE_AET, "127.0.0.1", node_port],
        },
        "DicomCheckCalledAet": False,
        "DicomScpTimeout": 30,
        "SaveJobs": False,
        "StorageCompression": False,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = (workdir / "orthanc.log").open("w")
    process = subprocess.Popen([binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, move_port, node_port, process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}; see {workdir / 'orthanc.log'}")
        try:
            if requests.get(f"{server.url}/system", auth=(USER, PASSWORD), timeout=2).ok:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"Orthanc did not answer within 60 s; see {workdir / 'orthanc.log'}")


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
