"""report.html: every case, failed first, escaping, relative links, embedded or linked previews, and a real
batch's page rendered by headless Chromium (no console errors, every case shown, sorting and filtering)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image

from pipeline.outputs.registry import PREVIEW_NAME, VOLUMES_NAME, OutputOptions
from pipeline.batch.report import BatchReport, CaseResult
from pipeline.outputs.html_report import write_html_report

HOSTILE = '<img src=x onerror=console.error("escaped?")> & "quotes"'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """The parts of report.html the tests look at: case rows (status, cell texts), srcs, hrefs, scripts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.scripts = self.external = 0
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-status" in attrs:
            self.rows.append({"status": attrs["data-status"], "cells": []})
        elif tag == "td" and self.rows:
            self._cell = []
        elif tag == "img":
            self.srcs.append(attrs["src"])
        elif tag == "a":
            self.hrefs.append(attrs["href"])
        elif tag == "script":
            self.scripts += 1
            self.external += "src" in attrs
        elif tag == "link":
            self.external += 1

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    @property
    def cases(self) -> list[str]:
        return [r["cells"][0] for r in self.rows]


def _volumes(scale: float) -> list[dict]:
    return [
        {"label": 2, "name": "lesion", "voxels": 0, "volume_ml": 0.0, "mean_intensity": None, "std_intensity": None,
         "min_intensity": None, "max_intensity": None},
        {"label": 1, "name": "liver", "voxels": 100, "volume_ml": 1500.0 * scale, "mean_intensity": 55.25,
         "std_intensity": 10.5, "min_intensity": -20.0, "max_intensity": 140.0},
    ]  # fmt: skip


def _case(out: Path, case: str, scale: float, size: tuple[int, int] = (30, 10)) -> CaseResult:
    (out / case).mkdir(parents=True)
    Image.new("RGB", size, (40, 200, 40)).save(out / case / PREVIEW_NAME)
    (out / case / VOLUMES_NAME).write_text(json.dumps(_volumes(scale)))
    (out / case / "seg.nii.gz").write_bytes(b"mask")
    names = [PREVIEW_NAME, VOLUMES_NAME, "seg.nii.gz"]
    return CaseResult(case, "ok", shape=(48, 44, 16), spacing=(0.8, 0.8, 2.5), seconds=2.0 * scale,
                      outputs={n: f"{case}/{n}" for n in names})  # fmt: skip


@pytest.fixture
def report(tmp_path) -> BatchReport:
    """Two ok cases (one with a name needing URL quoting), a skipped one, two failed ones (one hostile)."""
    report = BatchReport(tmp_path / "out", run_info={"bundle": "ct_organ", "intensity_modality": "CT"})
    out = report.out_dir
    report.add(_case(out, "case 10", 2.0))
    report.add(_case(out, "case_2", 0.00123 / 1500))
    (out / "case_0").mkdir()
    (out / "case_0" / "seg.nii.gz").write_bytes(b"mask")
    report.add(CaseResult("case_0", "skipped", outputs={"seg.nii.gz": "case_0/seg.nii.gz"}))
    report.add(
        CaseResult.failed("zz_broken", ValueError(f"bad header in ct.nii.gz: {HOSTILE}"), warnings=[HOSTILE])
    )
    report.add(
        CaseResult.failed(HOSTILE, OSError("no files"), outputs={"evil": "/etc/passwd", "up": "../x.txt"})
    )
    return report


def test_every_case_failed_first_with_reason_volumes_and_relative_links(report):
    page = Page(report.write_html().read_text())
    assert sorted(page.cases) == sorted(r.case for r in report.results)
    # failed first, then by case key
    assert page.cases == [HOSTILE, "zz_broken", "case 10", "case_0", "case_2"]
    assert [r["status"] for r in page.rows] == ["failed", "failed", "ok", "skipped", "ok"]
    broken = page.rows[page.cases.index("zz_broken")]["cells"]
    assert broken[2] == f"ValueError: bad header in ct.nii.gz: {HOSTILE}{HOSTILE}"  # error, then the warning
    liver = page.rows[page.cases.index("case 10")]["cells"][5]  # columns by label: liver (1), lesion (2)
    assert liver == "3000.00 mLHU 55.2 ± 10.5 [-20, 140]"
    assert page.rows[page.cases.index("case 10")]["cells"][6] == "0.00 mL"
    assert page.rows[page.cases.index("case_2")]["cells"][5].startswith("0.00123 mL")  # 3 significant digits
    assert page.scripts == 1 and page.external == 0
    names = (PREVIEW_NAME, VOLUMES_NAME, "seg.nii.gz")
    files = [f"{case}/{name}" for case in ("case%2010", "case_2") for name in names]
    previews = ["case%2010/preview.png", "case_2/preview.png"]  # each thumbnail opens its file
    assert sorted(page.hrefs) == sorted([*files, *previews, "case_0/seg.nii.gz"])
    for href in page.hrefs:
        assert (report.out_dir / unquote(href)).is_file()


def test_hostile_text_is_escaped(report):
    text = report.write_html().read_text()
    assert HOSTILE not in text and "<img src=x" not in text
    assert html.escape(HOSTILE, quote=True) in text
    assert "/etc/passwd" not in text and "../x.txt" not in text  # never linked, only the output names shown


def test_push_outcomes_get_a_column_and_a_summary(report):
    """After ``--push``: each finished case's outcome (a failed store with its reason); failed cases: none."""
    push = {
        "destination": "dicomweb:http://127.0.0.1:8042/dicom-web",
        "cases": [
            {"case": "case 10", "status": "pushed", "stored": 2, "error": None},
            {"case": "case_0", "status": "already", "stored": 0, "error": None},
            {"case": "case_2", "status": "failed", "stored": 0, "error": f"HTTPError: 503 {HOSTILE}"},
        ],
        "failed": 1,
    }
    text = report.write_html(push=push).read_text()
    page = Page(text)
    pushed = {case: row["cells"][4] for case, row in zip(page.cases, page.rows)}
    assert pushed == {
        HOSTILE: "not pushed",
        "zz_broken": "not pushed",
        "case 10": "pushed (2)",
        "case_0": "already",
        "case_2": f"failed{'HTTPError: 503 ' + HOSTILE}",
    }
    assert "dicomweb:http://127.0.0.1:8042/dicom-web: 1 pushed, 1 already, 1 failed" in text
    assert HOSTILE not in text
    assert "Pushed" not in report.write_html().read_text()  # no push, no column


@pytest.mark.parametrize("limit, embedded", [(0, 0), (10**6, 2)])
def test_previews_are_embedded_within_the_budget_then_linked(report, limit, embedded):
    rows = {r.case: json.loads((report.out_dir / r.outputs[VOLUMES_NAME]).read_text()) for r in report.results
            if VOLUMES_NAME in r.outputs}  # fmt: skip
    previews = {c: report.out_dir / c / PREVIEW_NAME for c in rows}
    path = write_html_report(report.html_path, report.as_dict(), rows, previews, embed_limit=limit)
    page = Page(path.read_text())
    assert sum(s.startswith("data:image/png;base64,") for s in page.srcs) == embedded
    assert sorted(s for s in page.srcs if not s.startswith("data:")) == (
        [] if embedded else ["case%2010/preview.png", "case_2/preview.png"]
    )
    assert f"Previews: {embedded} embedded, {2 - embedded} linked" in path.read_text()


def test_intensity_unit_follows_the_modality_and_unreadable_volumes_are_logged(report, caplog):
    (report.out_dir / "case_2" / VOLUMES_NAME).write_text("{not json")
    report.run_info["intensity_modality"] = "MR"
    page = Page(report.write_html().read_text())
    assert page.rows[page.cases.index("case 10")]["cells"][5] == "3000.00 mLintensity 55.25 ± 10.5 [-20, 140]"
    assert page.rows[page.cases.index("case_2")]["cells"][5] == ""
    assert "case_2" in caplog.text and "unreadable" in caplog.text


# --- a real batch in headless Chromium -------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_page(tiny_dataset, tmp_path_factory) -> Path:
    """report.html of a real batch: a NIfTI and a DICOM case, an empty folder and a hostile-named broken one
    (its case key is sanitised by discovery, its path stays in the reason)."""
    from pipeline.batch.runner import predict_folder
    from pipeline.inference.options import InferenceOptions
    from pipeline.inference.predictor import Predictor
    from tests.test_predictor import BUNDLE, random_checkpoint

    patients = tiny_dataset.parent / "patients"
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("out")
    (src / "nifti_case").mkdir()
    shutil.copy(patients / "case_000" / "ct.nii.gz", src / "nifti_case" / "ct.nii.gz")
    shutil.copytree(patients / "case_002" / "ct_dicom", src / "dicom_case")
    (src / "empty").mkdir()
    (src / HOSTILE).mkdir()
    (src / HOSTILE / "ct.nii.gz").write_bytes(b"not a nifti")
    checkpoint = random_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")
    predictor = Predictor.from_bundle(
        BUNDLE, checkpoint, options=InferenceOptions(roi_size=(32, 32, 16), device="cpu")
    )
    report = predict_folder(predictor, src, out, outputs=OutputOptions(dicom_seg=False), prefetch=0)
    assert report.counts() == {"ok": 2, "failed": 2, "skipped": 0}
    return report.html_path


def test_real_batch_page_lists_every_case_failed_first(batch_page):
    text = batch_page.read_text()
    page = Page(text)
    failed = sorted(c["case"] for c in json.loads(batch_page.with_suffix(".json").read_text())["cases"]
                    if c["status"] == "failed")  # fmt: skip
    assert page.cases == [*failed, "dicom_case", "nifti_case"] and "empty" in failed
    assert HOSTILE not in text  # escaped, and still readable in the reason (the input path):
    assert any(HOSTILE in row["cells"][2] for row in page.rows)
    assert sum(s.startswith("data:image/png;base64,") for s in page.srcs) == 2


_PROBE = """<script>
const order = () => Array.from(document.querySelectorAll("#cases tbody tr")).map((r) => r.cells[0].textContent);
const probe = {initial: order()};
document.querySelector("#cases thead th:nth-child(1) button").click();
probe.byCase = order();
document.querySelector("#cases thead th:nth-child(1) button").click();
probe.byCaseDescending = order();
const status = document.getElementById("filter-status");
status.value = "ok";
status.dispatchEvent(new Event("change"));
probe.shownOk = document.getElementById("shown").textContent;
probe.visibleOk = Array.from(document.querySelectorAll("#cases tbody tr")).filter((r) => !r.hidden).length;
document.body.dataset.probe = JSON.stringify(probe);
</script></body>"""


def _chromium(tmp_path: Path, page: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'profile'}", *flags, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium absent (Debian package 'chromium')")
def test_real_batch_page_renders_in_chromium_without_console_errors(batch_page, tmp_path):
    run = _chromium(tmp_path, batch_page, "--dump-dom")
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []  # the page logs nothing: any console line is an error or a stray debug message
    dom = Page(run.stdout)
    assert dom.cases == Page(batch_page.read_text()).cases and len(dom.cases) == 4
    assert 'data-ready="1"' in run.stdout and 'class="missing"' not in run.stdout  # every preview loaded

    probed = batch_page.with_name("probe.html")  # a copy with a script that sorts and filters like a user
    probed.write_text(batch_page.read_text().replace("</body>", _PROBE))
    run = _chromium(tmp_path, probed, "--dump-dom")
    assert [line for line in run.stderr.splitlines() if ":CONSOLE" in line] == []
    probe = json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', run.stdout).group(1)))
    assert probe["initial"] == dom.cases
    assert probe["byCase"] == sorted(probe["initial"]) and probe["byCaseDescending"] == probe["byCase"][::-1]
    assert probe["shownOk"] == "2" and probe["visibleOk"] == 2

    shot = tmp_path / "report.png"
    _chromium(tmp_path, batch_page, f"--screenshot={shot}", "--window-size=1400,900", "--hide-scrollbars")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(shot) as img:
        assert img.size == (1400, 900) and len(img.getcolors(2**24)) > 10  # not a blank page


def test_cases_flagged_by_qc_come_first_after_failures_with_their_findings(report):
    flagged = report.results[0]
    flagged.qc = {"score": 0.91, "review": True, "findings": [f"volume 3x training {HOSTILE}"]}
    report.results[1].qc = {"score": 0.05, "review": False, "findings": []}
    page_text = report.write_html().read_text()
    page = Page(page_text)
    assert page.cases[:3] == [HOSTILE, "zz_broken", flagged.case]
    qc = page.rows[2]["cells"][3]
    assert qc.startswith("0.91 review") and f"volume 3x training {HOSTILE}" in qc
    assert page.rows[3]["cells"][3] == "0.05 ok"
    assert HOSTILE not in page_text  # escaped
    assert 'data-review="true"' in page_text and '<option value="review">' in page_text
