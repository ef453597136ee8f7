"""``report.html``: one self-contained page for a whole batch, to browse offline from disk.

Every case's status and reason (failed cases first, then those QC flags for review), its QC score and findings,
its preview (click to enlarge), per-structure volumes (mL) with intensity
statistics (HU for CT), and relative links to its files, in a table sorted and filtered by inline script (no
library, no network). Previews are embedded as ``data:`` URIs while their total stays within ``embed_limit``
bytes, so a small batch's page can be mailed on its own; later ones are linked relative to the page, which then
works from the output folder. Every text is HTML-escaped; only case keys name cases (as in ``report.json``).
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from pipeline.core.atomic import atomic_write_text

__all__ = ["EMBED_LIMIT_BYTES", "write_html_report"]

EMBED_LIMIT_BYTES = 10 * 2**20
"""PNG bytes embedded per page by default (about 30 CT previews); the rest are linked."""
_STATUS_ORDER = {"failed": 0, "ok": 1, "skipped": 2}
_ASSETS = files("pipeline.outputs") / "report_assets"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(relative: str) -> str | None:
    """A URL for a path relative to the page, ``None`` for absolute paths or ones leaving the page's folder."""
    path = PurePosixPath(str(relative).replace(os.sep, "/"))
    if path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        return None
    return quote(path.as_posix())


def _number(value: Any, digits: int) -> str:
    return "" if value is None else f"{float(value):.{digits}f}"


def _volume_cell(row: Mapping[str, Any] | None, unit: str) -> str:
    if row is None:
        return '<td class="num" data-sort=""></td>'
    volume = float(row["volume_ml"])
    # small lesions keep 3 significant digits
    text = f"{volume:.2f} mL" if volume >= 1 or volume == 0 else f"{volume:.3g} mL"
    if row.get("mean_intensity") is not None:
        # HU to 0.1 (extremes whole); other scanner units, of any scale, to 4 significant digits
        fine, whole = (".1f", ".0f") if unit == "HU" else (".4g", ".4g")
        mean, std = float(row["mean_intensity"]), float(row["std_intensity"])
        low, high = row.get("min_intensity"), row.get("max_intensity")
        spread = (
            f" [{float(low):{whole}}, {float(high):{whole}}]" if low is not None and high is not None else ""
        )
        text += f'<span class="stats">{_e(unit)} {mean:{fine}} &plusmn; {std:{fine}}{spread}</span>'
    return f'<td class="num" data-sort="{_e(row["volume_ml"])}">{text}</td>'


class _Previews:
    """Turns preview files into ``<img>`` tags: embedded until the byte budget is spent, linked after."""

    def __init__(self, page_dir: Path, limit: int) -> None:
        self.page_dir, self.left = page_dir, limit
        self.embedded = self.linked = 0

    def cell(self, case: str, path: Path | None) -> str:
        if path is None:
            return "<td></td>"
        relative = os.path.relpath(path, self.page_dir)
        href = _href(relative)
        size = path.stat().st_size if path.is_file() else None
        if size is not None and size <= self.left:
            self.left -= size
            self.embedded += 1
            src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        elif href is not None:
            self.linked += 1
            src = href
        else:
            return '<td><span class="missing">preview outside the report folder</span></td>'
        img = f'<img class="preview" src="{_e(src)}" alt="preview of {_e(case)}">'
        return f'<td><a href="{_e(href)}">{img}</a></td>' if href else f"<td>{img}</td>"


def _push_cell(pushed: Mapping[str, Any] | None) -> str:
    """A case's push outcome (its ``push.json`` entry): status, objects stored now, a failed push's error."""
    if pushed is None:
        return '<td class="push">not pushed</td>'
    status = str(pushed["status"])
    text = _e(status)
    if pushed.get("stored"):
        text += f" ({int(pushed['stored'])})"
    if pushed.get("error"):
        text += f'<div class="reason">{_e(pushed["error"])}</div>'
    return f'<td class="push" data-push="{_e(status)}">{text}</td>'


def _qc_cell(qc: Mapping[str, Any] | None) -> str:
    """A case's QC score, review flag and named findings (the ``qc`` block of ``report.json``)."""
    if not qc:
        return '<td class="qc" data-sort="-1"></td>'
    review = bool(qc.get("review"))
    text = f'<span class="qc-score">{float(qc["score"]):.2f}</span>'
    text += ' <span class="qc-flag review">review</span>' if review else ' <span class="qc-flag">ok</span>'
    findings = qc.get("findings") or []
    if findings:
        text += "<ul>" + "".join(f"<li>{_e(f)}</li>" for f in findings) + "</ul>"
    return f'<td class="qc" data-sort="{float(qc["score"]):.4f}" data-review="{str(review).lower()}">{text}</td>'


def _case_row(
    case: Mapping[str, Any],
    structures: Sequence[str],
    volumes: Sequence[Mapping[str, Any]],
    preview: str,
    unit: str,
    push: Mapping[str, Mapping[str, Any]] | None,
) -> str:
    status = str(case["status"])
    reason = _e(case.get("error") or "")
    warnings = case.get("warnings") or []
    if warnings:
        reason += "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul>"
    by_name = {str(r["name"]): r for r in volumes}
    links = []
    for name, relative in (case.get("outputs") or {}).items():
        href = _href(relative)
        links.append(f'<a href="{_e(href)}">{_e(name)}</a>' if href else f"<span>{_e(name)}</span>")
    shape = "&times;".join(_e(v) for v in case.get("shape") or [])
    spacing = "&times;".join(f"{float(v):.3g}" for v in case.get("spacing") or [])
    seconds = case.get("seconds")
    cells = [
        f"<td>{_e(case['case'])}</td>",
        f'<td class="status" data-sort="{_STATUS_ORDER.get(status, 9)}">{_e(status)}</td>',
        f'<td class="reason">{reason}</td>',
        _qc_cell(case.get("qc")),
        *([_push_cell(push.get(str(case["case"])))] if push is not None else []),
        preview,
        *(_volume_cell(by_name.get(name), unit) for name in structures),
        f"<td>{shape}</td>",
        f"<td>{spacing}</td>",
        f'<td class="num">{_number(seconds, 1)}</td>',
        f'<td class="files">{"".join(links)}</td>',
    ]
    return f'<tr data-status="{_e(status)}">{"".join(cells)}</tr>'


def _header(structures: Sequence[str], pushed: bool) -> str:
    def sortable(label: str, kind: str = "text") -> str:
        return f'<th data-type="{kind}"><button type="button">{label}</button></th>'

    cells = [
        sortable("Case"),
        sortable("Status", "number"),
        "<th>Reason / warnings</th>",
        sortable("QC (review first)", "number"),
        *([sortable("Pushed")] if pushed else []),
        "<th>Preview</th>",
        *(sortable(f"{_e(name)} (mL)", "number") for name in structures),
        "<th>Shape</th>",
        "<th>Spacing (mm)</th>",
        sortable("Time (s)", "number"),
        "<th>Files</th>",
    ]
    return f"<thead><tr>{''.join(cells)}</tr></thead>"


def _run_facts(report: Mapping[str, Any], counts: Mapping[str, int], push: Mapping[str, Any] | None) -> str:
    run = report.get("run") or {}
    pushed = None
    if push is not None:
        statuses = [str(c["status"]) for c in push.get("cases") or []]
        outcome = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses)) or "no finished case"
        pushed = f"{push.get('destination')}: {outcome}"
    facts = {
        "bundle": run.get("bundle"),
        "cases": ", ".join(f"{n} {s}" for s, n in counts.items()),
        "pushed to": pushed,
        "started": report.get("started"),
        "updated": report.get("updated"),
        "device": run.get("device"),
        "shard": run.get("shard"),
    }
    items = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts.items() if v is not None)
    return f'<dl class="run">{items}</dl>'


def _review_order(case: Mapping[str, Any]) -> tuple:
    """Failed cases first, then cases flagged for review, each by QC score (highest first), then by case."""
    qc = case.get("qc") or {}
    return (case["status"] != "failed", not qc.get("review", False), -float(qc.get("score", 0.0)), str(case["case"]))


def write_html_report(
    path: str | os.PathLike,
    report: Mapping[str, Any],
    volumes: Mapping[str, Sequence[Mapping[str, Any]]],
    previews: Mapping[str, Path],
    *,
    push: Mapping[str, Any] | None = None,
    embed_limit: int = EMBED_LIMIT_BYTES,
) -> Path:
    """Write the batch page atomically.

    Args:
        path: destination ``.html``; case output paths in ``report`` are relative to its folder.
        report: the content of ``report.json`` (``run``, ``started``, ``updated``, ``cases`` with ``case``,
            ``status``, ``error``, ``warnings``, ``shape``, ``spacing``, ``seconds``, ``outputs``).
        volumes: case -> rows of :func:`~pipeline.outputs.volumetry.structure_volumes` (``name``,
            ``volume_ml``, ``mean_intensity``, ``std_intensity``, ``min_intensity``, ``max_intensity``).
        previews: case -> its preview PNG.
        push: the content of ``push.json`` (``destination``, ``cases`` with ``case``, ``status``, ``stored``,
            ``error``) when the results were pushed to an archive: a column with each case's outcome.
        embed_limit: PNG bytes embedded as ``data:`` URIs, in page order; later previews are linked.

    Returns:
        ``path``.
    """
    path = Path(path)
    run = report.get("run") or {}
    unit = "HU" if str(run.get("intensity_modality", "")).upper() == "CT" else "intensity"
    cases = sorted(report.get("cases") or [], key=_review_order)
    labels = {str(r["name"]): int(r["label"]) for rows in volumes.values() for r in rows}
    structures = sorted(labels, key=lambda name: (labels[name], name))
    counts: dict[str, int] = {}
    for case in cases:
        counts[case["status"]] = counts.get(case["status"], 0) + 1
    pictures = _Previews(path.parent, embed_limit)
    by_case = None if push is None else {str(p["case"]): p for p in push.get("cases") or []}
    rows = []
    for c in cases:
        preview = pictures.cell(c["case"], previews.get(c["case"]))
        rows.append(_case_row(c, structures, volumes.get(c["case"], []), preview, unit, by_case))
    body = "\n".join(rows)
    options = "".join(f'<option value="{s}">{s}</option>' for s in [*_STATUS_ORDER, "review"])
    title = f"clinseg batch report: {run.get('bundle') or 'batch'}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_ASSETS.joinpath("report.css").read_text(encoding="utf-8")}</style></head>
<body>
<h1>{_e(title)}</h1>
{_run_facts(report, counts, push)}
<p class="note">Failed cases first, then those flagged for review by QC, highest score first (score 0-1: how
likely the case is wrong, from its checks against the training data and its uncertainty). Intensities inside each structure: {_e(unit)} mean &plusmn; std [min, max].
Previews: {pictures.embedded} embedded, {pictures.linked} linked to the case folders.</p>
<div class="controls">
<label>Filter <input type="search" id="filter-text" placeholder="case, status, reason"></label>
<label>Status <select id="filter-status"><option value="">all</option>{options}</select></label>
<span><span id="shown">{len(cases)}</span> of {len(cases)} cases shown</span>
</div>
<div class="scroll"><table id="cases">
{_header(structures, push is not None)}
<tbody>
{body}
</tbody></table></div>
<script>{_ASSETS.joinpath("report.js").read_text(encoding="utf-8")}</script>
</body></html>
"""
    return atomic_write_text(path, page)
