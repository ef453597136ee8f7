"""The folder-wide ``report.json``, ``summary.csv``, ``volumes.csv`` and ``report.html`` of a sharded run, from
the files each shard wrote (:mod:`pipeline.batch.shard`)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from pipeline.batch.report import BatchReport, CaseResult
from pipeline.batch.shard import Shard
from pipeline.outputs.volumetry import write_volumes_csv

__all__ = ["merge_shards"]


def merge_shards(output: str | Path) -> BatchReport:
    """Merge the shard files of a finished sharded run into ``report.json``, ``summary.csv``, ``volumes.csv`` and
    one ``report.html``.

    Raises:
        FileNotFoundError: no shard reports, or some shard of the run has not written its report yet.
        ValueError: shard reports of runs with different shard counts.
    """
    output = Path(output)
    found = {}
    for path in output.glob("report.shard-*-of-*.json"):
        match = re.fullmatch(r"report\.shard-(\d+)-of-(\d+)\.json", path.name)
        if match:
            found[(int(match.group(1)), int(match.group(2)))] = path
    counts = {n for _, n in found}
    if not found:
        raise FileNotFoundError(f"no shard reports (report.shard-i-of-n.json) in {output}")
    if len(counts) != 1:
        raise ValueError(f"{output} holds shard reports of runs with different shard counts {sorted(counts)}")
    count = counts.pop()
    missing = [i for i in range(count) if (i, count) not in found]
    if missing:
        raise FileNotFoundError(f"shards {missing} of {count} have not written their report in {output} yet")
    shards = [json.loads(found[(i, count)].read_text()) for i in range(count)]
    run_info = {**shards[0]["run"], "shard": f"merged {count}"}
    merged = BatchReport(output, run_info)
    results = sorted((r for s in shards for r in s["cases"]), key=lambda r: r["case"])
    for result in results:
        merged.results.append(CaseResult(**result))
    merged.write()
    rows = []
    for i in range(count):
        with (output / f"volumes{Shard(i, count).suffix}.csv").open(newline="") as f:
            rows.extend(csv.DictReader(f))
    write_volumes_csv(sorted(rows, key=lambda r: (r["case"], int(r["label"]))), output / "volumes.csv")
    merged.write_html()
    return merged
