// clinseg batch report: sorting and filtering of the case table; inlined into report.html, no libraries.
(function () {
  "use strict";
  const table = document.getElementById("cases");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const text = document.getElementById("filter-text");
  const status = document.getElementById("filter-status");
  const shown = document.getElementById("shown");

  function applyFilter() {
    const words = text.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const wanted = status.value;
    let count = 0;
    for (const row of rows) {
      const haystack = row.textContent.toLowerCase();
      const review = row.querySelector("td.qc[data-review=true]") !== null;
      const matches = !wanted || row.dataset.status === wanted || (wanted === "review" && review);
      const visible = matches && words.every((w) => haystack.includes(w));
      row.hidden = !visible;
      count += visible ? 1 : 0;
    }
    shown.textContent = String(count);
  }

  function sortKey(row, index, numeric) {
    const cell = row.cells[index];
    const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
    if (!numeric) return raw;
    return raw === "" ? NaN : Number(raw);
  }

  function sortBy(th) {
    const index = th.cellIndex;
    const numeric = th.dataset.type === "number";
    const direction = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    for (const other of th.parentElement.cells) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", direction === 1 ? "ascending" : "descending");
    const keyed = rows.map((row) => [sortKey(row, index, numeric), row]);
    keyed.sort((a, b) => {
      const [x, y] = [a[0], b[0]];
      if (numeric) {
        if (Number.isNaN(x) || Number.isNaN(y)) return Number.isNaN(x) - Number.isNaN(y); // blanks last
        return direction * (x - y);
      }
      return direction * x.localeCompare(y, undefined, { numeric: true });
    });
    body.append(...keyed.map((pair) => pair[1]));
  }

  function markMissing(img) {
    const note = document.createElement("span");
    note.className = "missing";
    note.textContent = "preview file missing";
    img.replaceWith(note);
  }

  for (const th of table.tHead.rows[0].cells) {
    const button = th.querySelector("button");
    if (button) button.addEventListener("click", () => sortBy(th));
  }
  text.addEventListener("input", applyFilter);
  status.addEventListener("change", applyFilter);
  for (const img of document.querySelectorAll("img.preview")) {
    if (img.complete && img.naturalWidth === 0) markMissing(img);
    else img.addEventListener("error", () => markMissing(img));
    img.addEventListener("click", (event) => {  // open larger in place; a second click closes it
      event.preventDefault();
      img.classList.toggle("zoomed");
    });
  }
  applyFilter();
  document.body.dataset.ready = "1";
})();
