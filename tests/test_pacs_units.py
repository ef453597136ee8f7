"""PACS pieces without a server: selection, credentials, the verified resumable cache, failure isolation of
retrieval, the push ledger and the listening node's series bookkeeping (a fake in-memory archive)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest

from pipeline.pacs.archive import Selection, SeriesRef, find_series, read_uid_file
from pipeline.pacs.backoff import Backoff
from pipeline.pacs.batch import retrieve_cases
from pipeline.pacs.cache import SeriesCache, case_key
from pipeline.pacs.connect import open_archive
from pipeline.pacs.credentials import ENV_PASSWORD, ENV_TOKEN, ENV_USER, load_credentials
from pipeline.pacs.push import LEDGER, push_case
from pipeline.pacs.journal import JOURNAL
from pipeline.pacs.serve import ServeOptions, StorageNode
from pipeline.pacs.spool import RECEIVING
from pipeline.synthetic.dicom_series import write_dicom_series

STUDY, SERIES, OTHER = (
    "1.2.826.0.1.3680043.8.498.10",
    "1.2.826.0.1.3680043.8.498.11",
    "1.2.826.0.1.3680043.8.498.12",
)


class FakeArchive:
    """Series held in memory; counts retrievals; ``fail`` makes store/retrieve raise."""

    label = "fake:archive"

    def __init__(self, series: dict[SeriesRef, list[pydicom.Dataset]]) -> None:
        self.series, self.retrieved, self.stored, self.fail = series, [], [], False

    def query_studies(self, filters):
        return sorted({r.study_uid for r in self.series})

    def query_series(self, study_uid, filters):
        return [
            r
            for r in self.series
            if study_uid in (None, r.study_uid)
            and filters.get("SeriesInstanceUID", r.series_uid) == r.series_uid
        ]

    def _instances(self, ref):
        return next(v for r, v in self.series.items() if r.series_uid == ref.series_uid)

    def list_instances(self, ref):
        return sorted(str(d.SOPInstanceUID) for d in self._instances(ref))

    def retrieve(self, ref, sop_uids, sink):
        if self.fail:
            raise ConnectionError("archive unreachable")
        for ds in self._instances(ref):
            if sop_uids is None or ds.SOPInstanceUID in sop_uids:
                self.retrieved.append(str(ds.SOPInstanceUID))
                sink(ds)

    def store(self, paths):
        if self.fail:
            raise ConnectionError("archive unreachable")
        self.stored += [p.name for p in paths]


@pytest.fixture
def series(tmp_path):
    paths = write_dicom_series(
        np.zeros((8, 6, 4)), np.eye(4), tmp_path / "src", series_uid=SERIES, study_uid=STUDY, uid_seed="unit"
    )
    return SeriesRef(STUDY, SERIES, "CT", 4), [pydicom.dcmread(p) for p in paths]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "select what to segment"),
        ({"studies": ("1.2.abc",)}, "not DICOM UIDs"),
        ({"study_date": "2020-01-01"}, "--study-date"),
        ({"series": ("1." * 40,)}, "not DICOM UIDs"),
    ],
)
def test_bad_selections_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Selection(**kwargs)


def test_uid_file_gives_studies_and_series(tmp_path):
    path = tmp_path / "uids.txt"
    path.write_text(f"# studies\n{STUDY}\n\n{STUDY} {SERIES}  # one series\n")
    assert read_uid_file(path) == ([STUDY], [SERIES])
    path.write_text("1.2 3.4 5.6\n")
    with pytest.raises(ValueError, match="uids.txt:1"):
        read_uid_file(path)


def test_find_series_skips_non_image_series(series):
    ref, datasets = series
    seg = SeriesRef(STUDY, OTHER, "SEG", 1)
    archive = FakeArchive({ref: datasets, seg: []})
    assert find_series(archive, Selection(studies=(STUDY,))) == [ref]
    assert find_series(archive, Selection(series=(SERIES,))) == [ref]


def test_credentials_come_from_the_environment_or_a_file(tmp_path):
    assert load_credentials(environ={ENV_USER: "u", ENV_PASSWORD: "p"}).password == "p"
    assert load_credentials(environ={ENV_TOKEN: "t"}).token == "t"
    assert not load_credentials(environ={})
    with pytest.raises(ValueError, match=ENV_PASSWORD):
        load_credentials(environ={ENV_USER: "u"})
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"username": "u", "password": "secret"}))
    creds = load_credentials(path)
    assert creds.username == "u" and "secret" not in repr(creds)
    path.write_text("[]")
    with pytest.raises(ValueError, match="creds.json"):
        load_credentials(path)


@pytest.mark.parametrize(
    "spec, match",
    [
        ("dicomweb:http://user:pw@host/dicom-web", "must not carry credentials"),
        ("dicomweb:ftp://host", "http"),
        ("dimse:host:104", "AET@host:port"),
        ("pacs:somewhere", "expected dicomweb"),
    ],
)
def test_bad_archive_specs_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        open_archive(spec)


def test_cache_is_resumable_and_verified(series, tmp_path):
    ref, datasets = series
    archive, cache = FakeArchive({ref: datasets}), SeriesCache(tmp_path / "cache")
    folder = cache.fetch(archive, ref)
    assert (
        folder.name == case_key(SERIES)
        and len(list(folder.glob("*.dcm"))) == 4
        and len(archive.retrieved) == 4
    )
    assert cache.fetch(archive, ref) == folder and len(archive.retrieved) == 4  # complete: nothing retrieved
    (folder / ".series.json").unlink()
    min(folder.glob("*.dcm")).unlink()  # an interrupted run
    cache.fetch(archive, ref)
    assert len(archive.retrieved) == 5  # only the missing instance


def test_cache_refuses_incomplete_or_foreign_series(series, tmp_path):
    ref, datasets = series
    short = FakeArchive({ref: datasets})
    short.list_instances = lambda r: sorted(str(d.SOPInstanceUID) for d in datasets) + ["1.2.3"]
    with pytest.raises(ValueError, match="4 of 5 instances retrieved and verified"):
        SeriesCache(tmp_path / "a").fetch(short, SeriesRef(STUDY, SERIES, "CT", None))
    other = SeriesRef(STUDY, OTHER, "CT", 4)
    with pytest.raises(ValueError, match="another series"):
        SeriesCache(tmp_path / "b").fetch(FakeArchive({other: datasets}), other)


def test_a_series_that_fails_to_retrieve_is_a_failed_case(series, tmp_path):
    ref, datasets = series
    archive = FakeArchive({ref: datasets})
    archive.fail = True
    (case,) = retrieve_cases(archive, [ref], SeriesCache(tmp_path / "cache"), "image")
    assert case.case_id == case_key(SERIES) and case.kind == "missing"
    assert "retrieval from fake:archive failed: ConnectionError: archive unreachable" in case.problem


def test_push_stores_once_and_retries_failures(series, tmp_path):
    _, datasets = series
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    datasets[0].save_as(case_dir / "seg.dcm", enforce_file_format=True)
    archive = FakeArchive({})
    archive.fail = True
    failed = push_case(case_dir, archive, ["seg.dcm", "rtstruct.dcm"])
    assert failed.status == "failed" and "unreachable" in failed.error
    assert json.loads((case_dir / LEDGER).read_text())["fake:archive"]["error"]
    archive.fail = False
    assert push_case(case_dir, archive, ["seg.dcm", "rtstruct.dcm"]).status == "pushed"
    assert push_case(case_dir, archive, ["seg.dcm", "rtstruct.dcm"]).status == "already"
    assert archive.stored == ["seg.dcm"]
    assert push_case(tmp_path, archive, ["seg.dcm"]).status == "nothing"


class Clock:
    """A settable stand-in for ``time.monotonic``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("first, longest, waits", [(10, 600, [10, 20, 40, 80]), (10, 25, [10, 20, 25, 25])])
def test_backoff_doubles_up_to_the_longest_and_forgets_a_success(first, longest, waits):
    backoff = Backoff(first, longest)
    now = 0.0
    assert backoff.due("k", now)
    for wait in waits:
        assert backoff.failed("k", now) == wait
        assert not backoff.due("k", now + wait - 0.1) and backoff.due("k", now + wait) and backoff.due("other", now)
        now += wait
    backoff.succeeded("k")
    assert backoff.due("k", now)
    with pytest.raises(ValueError, match="0 < first <= longest"):
        Backoff(5, 1)


def test_a_failed_push_is_retried_on_the_backoff_not_every_poll(series, tmp_path, monkeypatch):
    from pipeline.pacs import serve

    attempts = []
    def push_case(*args):
        attempts.append(args)
        return SimpleNamespace(status="failed", error="down")

    def predict_folder(predictor, cases, out, options):
        results = [SimpleNamespace(case=c.case_id, status="ok", error=None, warnings=[]) for c in cases]
        return SimpleNamespace(results=results, write=lambda: None)

    monkeypatch.setattr(serve, "push_case", push_case)
    monkeypatch.setattr(serve, "predict_folder", predict_folder)
    predictor, clock = SimpleNamespace(input_keys=("image",)), Clock()
    node = StorageNode(predictor, tmp_path / "spool", tmp_path / "out", push_to=FakeArchive({}), clock=clock)
    node._append({"case": case_key(SERIES), "status": "ok", "push": "failed", "revision": 1})
    for _ in range(5):  # five polls within the first 10 s: one try
        node.process_ready()
        clock.now += 1
    assert len(attempts) == 1
    clock.now += 5  # 10 s after the failure: the second try, then 20 s to the third
    node.process_ready()
    clock.now += 19
    node.process_ready()
    assert len(attempts) == 2
    clock.now += 1
    node.process_ready()
    assert len(attempts) == 3 and node.journal()[case_key(SERIES)]["push"] == "failed"


def test_node_waits_for_quiet_released_series_and_never_reprocesses(series, tmp_path):
    _, datasets = series
    predictor, clock = SimpleNamespace(input_keys=("image",)), Clock()
    options = ServeOptions(quiet_seconds=5, settle_seconds=30)
    node = StorageNode(predictor, tmp_path / "spool", tmp_path / "out", options=options, clock=clock)
    for ds in datasets:
        assert node.spool.store(ds, sender=1)
    assert not node.spool.store(datasets[0], sender=1)  # a duplicate is not written again
    clock.now += 60
    assert not node._triage(case_key(SERIES))  # the sending association is still open
    node.spool.ended(1, released=True)
    assert node._triage(case_key(SERIES))
    with (tmp_path / "spool" / JOURNAL).open("a") as f:
        f.write(json.dumps({"case": case_key(SERIES), "status": "ok"}) + "\n")
    restarted = StorageNode(predictor, tmp_path / "spool", tmp_path / "out", options=options, clock=clock)
    assert not restarted._triage(case_key(SERIES))
    assert len(os.listdir(tmp_path / "spool" / "incoming" / case_key(SERIES))) == 5  # 4 files + .processed.json
    with pytest.raises(ValueError, match="without SeriesInstanceUID"):
        node.spool.store(pydicom.Dataset(), sender=2)


@pytest.mark.parametrize(
    "events, interrupted",
    [
        ([("released", 1), ("closed", 1)], False),
        ([("closed", 1), ("released", 1)], False),  # pynetdicom's DUL thread may report the close first
        ([("aborted", 1), ("closed", 1)], True),
        ([("closed", 1), ("released", 2)], True),  # another association's release is not this one's
    ],
)
def test_a_release_ends_the_wait_whatever_the_event_order(series, tmp_path, events, interrupted):
    _, datasets = series
    predictor, clock = SimpleNamespace(input_keys=("image",)), Clock()
    node = StorageNode(predictor, tmp_path / "spool", tmp_path / "out", options=ServeOptions(), clock=clock)
    node.spool.store(datasets[0], sender=1)
    for event, sender in events:
        node.spool.ended(sender, released=event == "released")
    state = node.spool.series[case_key(SERIES)]
    assert state.interrupted == interrupted and not state.senders
    assert (tmp_path / "spool" / "incoming" / case_key(SERIES) / RECEIVING).exists() == interrupted


def test_an_interrupted_or_short_series_waits_then_is_incomplete(series, tmp_path):
    _, datasets = series
    predictor, clock = SimpleNamespace(input_keys=("image",)), Clock()
    options = ServeOptions(quiet_seconds=1, incomplete_seconds=30, settle_seconds=0)
    node = StorageNode(predictor, tmp_path / "spool", tmp_path / "out", options=options, clock=clock)
    for ds in datasets[:2]:
        node.spool.store(ds, sender=1)
    node.spool.ended(1, released=False)  # aborted mid-series
    restarted = StorageNode(predictor, tmp_path / "spool", tmp_path / "out", options=options, clock=clock)
    key = case_key(SERIES)
    assert restarted.spool.series[key].interrupted  # .receiving survived the "crash"
    clock.now += 5
    assert not restarted._triage(key)
    clock.now += 30
    assert not restarted._triage(key) and restarted._done[key]["status"] == "incomplete"
    for ds in datasets:  # the resend, released: complete
        restarted.spool.store(ds, sender=2)
    restarted.spool.ended(2, released=True)
    clock.now += 2
    assert restarted._triage(key)
    counted = datasets[0].copy()
    counted.NumberOfSeriesRelatedInstances = 9
    counted.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    restarted.spool.store(counted, sender=3)
    restarted.spool.ended(3, released=True)
    clock.now += 2
    assert not restarted._triage(key)
    assert "5 of 9 instances received" in restarted._waiting[key]


def test_a_full_spool_refuses_with_out_of_resources(series, tmp_path):
    from pipeline.pacs.spool import OutOfResources, Spool, SpoolLimits

    _, datasets = series
    spool = Spool(tmp_path / "spool", SpoolLimits(max_bytes=1))
    assert spool.store(datasets[0], sender=1)
    with pytest.raises(OutOfResources, match="limit"):
        spool.store(datasets[1], sender=1)
    assert "its limit is" in spool.full()  # what a new association is rejected with
    assert Spool(tmp_path / "roomy").full() is None
    with pytest.raises(OutOfResources, match="free on the spool's disk"):
        Spool(tmp_path / "other", SpoolLimits(min_free_bytes=2**62)).store(datasets[0], sender=1)


def test_a_series_of_unknown_count_waits_the_settle_time_and_is_provisional(series, tmp_path):
    _, datasets = series
    predictor, clock = SimpleNamespace(input_keys=("image",)), Clock()
    node = StorageNode(predictor, tmp_path / "spool", tmp_path / "out", clock=clock,
                       options=ServeOptions(quiet_seconds=2, settle_seconds=10))  # fmt: skip
    key = case_key(SERIES)
    for ds in datasets[:2]:  # a sender that released after half the series, count unknown
        node.spool.store(ds, sender=1)
    node.spool.ended(1, released=True)
    clock.now += 3
    assert not node._triage(key)  # quiet, but nothing says the series is whole: it settles
    clock.now += 10
    assert node._triage(key) and "unverified" in node._unverified[key]


@pytest.mark.parametrize("keyword", ["NumberOfSeriesRelatedInstances", "ImagesInAcquisition"])
def test_a_count_in_the_headers_makes_a_short_series_wait(series, tmp_path, keyword):
    _, datasets = series
    predictor, clock = SimpleNamespace(input_keys=("image",)), Clock()
    node = StorageNode(predictor, tmp_path / "spool", tmp_path / "out", clock=clock,
                       options=ServeOptions(quiet_seconds=2, settle_seconds=0))  # fmt: skip
    for ds in datasets[:2]:
        setattr(ds, keyword, len(datasets))
        node.spool.store(ds, sender=1)
    node.spool.ended(1, released=True)
    clock.now += 100
    assert not node._triage(case_key(SERIES))
    assert node._waiting[case_key(SERIES)] == f"2 of 4 instances received (the sender's {keyword})"


@pytest.mark.parametrize("dropped, missing", [((), None), ((3,), "1 slice positions"), ((2, 3, 5), "3 slice")])
def test_slice_gaps_within_the_received_range_make_a_series_wait(tmp_path, dropped, missing):
    paths = write_dicom_series(np.zeros((4, 4, 8)), np.diag([1.0, 1.0, 2.5, 1.0]), tmp_path / "src",
                               series_uid=SERIES, study_uid=STUDY, uid_seed="gaps")  # fmt: skip
    predictor, clock = SimpleNamespace(input_keys=("image",)), Clock()
    node = StorageNode(predictor, tmp_path / "spool", tmp_path / "out", clock=clock,
                       options=ServeOptions(quiet_seconds=2, settle_seconds=0))  # fmt: skip
    for k, path in enumerate(paths):
        if k not in dropped:
            node.spool.store(pydicom.dcmread(path), sender=1)
    node.spool.ended(1, released=True)
    clock.now += 5
    assert node._triage(case_key(SERIES)) == (missing is None)
    if missing:
        assert node._waiting[case_key(SERIES)].startswith(missing)


def test_a_non_loopback_node_needs_an_allow_list(tmp_path):
    predictor = SimpleNamespace(input_keys=("image",))
    with pytest.raises(ValueError, match="--allow-aet"):
        StorageNode(predictor, tmp_path / "s", tmp_path / "o", options=ServeOptions(host="0.0.0.0"))
    node = StorageNode(
        predictor, tmp_path / "s", tmp_path / "o", options=ServeOptions(host="0.0.0.0", allow_aets=("PACS",))
    )
    assert node.allowed == ("PACS",)


def test_cli_serve_maps_flags_to_the_node(tmp_path, monkeypatch):
    from pipeline.cli import main
    from tests.test_predictor import BUNDLE, random_checkpoint

    nodes = []
    monkeypatch.setattr(StorageNode, "serve_forever", lambda self: nodes.append(self))
    ckpt = random_checkpoint(tmp_path / "model.pt")
    argv = ["serve", str(BUNDLE), "--checkpoint", str(ckpt), "--device", "cpu", "--spool", str(tmp_path / "spool"),
            "--output", str(tmp_path / "out"), "--port", "11999", "--ae-title", "NODE", "--quiet-seconds", "3",
            "--push-to", "dimse:PACS@127.0.0.1:4242", "--calling-aet", "NODE", "--rtstruct", "--allow-aet", "CT1",
            "--max-spool-gb", "2", "--min-free-gb", "0.5", "--incomplete-seconds", "60", "--settle-seconds", "7"]  # fmt: skip
    assert main(argv) == 0
    (node,) = nodes
    assert node.options == ServeOptions(
        "NODE", "127.0.0.1", 11999, 3.0, allow_aets=("CT1",), incomplete_seconds=60, settle_seconds=7
    )
    assert node.allowed == ("CT1", "PACS") and node.count_from is node.push_to
    assert node.spool.limits.max_bytes == 2 * 1024**3 and node.spool.limits.min_free_bytes == 1024**3 // 2
    assert node.push_to.label == "dimse:PACS@127.0.0.1:4242" and node.push_to.calling_aet == "NODE"
    assert node.batch.outputs.rtstruct and (tmp_path / "spool" / "incoming").is_dir()
