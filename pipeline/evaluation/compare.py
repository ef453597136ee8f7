"""Compare MLflow runs: per run type (training, evaluation), a table of the params that differ, best and final
metric values, duration and status; validation curves overlaid in one PNG; paired per-case statistics between two
evaluation runs.

Works against any MLflow store (SQLite file or tracking server) through ``MlflowClient``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.evaluation.stats import paired_stats
from pipeline.evaluation.table_format import FORMATS, ComparisonTable, json_value, select_columns
from pipeline.evaluation.tables import TABLE_ARTIFACT
from pipeline.tracking.run_tags import RUN_TYPE_TAG

logger = logging.getLogger(__name__)

_FILTER = re.compile(r"^\s*([\w.\-]+)\s*(!=|=)\s*(.*?)\s*$")
_LOWER_IS_BETTER = ("loss", "hd95", "msd", "distance")
UNTAGGED = "untagged"


def parse_filter(expr: str) -> tuple[str, str, str]:
    """``"params.network=res_unet"`` -> ``("params.network", "=", "res_unet")``; ``!=`` negates."""
    match = _FILTER.match(expr)
    if not match or not match.group(3):
        raise ValueError(
            f"--filter expects KEY=VALUE or KEY!=VALUE (e.g. params.network=res_unet), got {expr!r}"
        )
    return match.group(1), match.group(2), match.group(3)


def _flat(run: Any) -> dict[str, str]:
    facts = {f"params.{k}": v for k, v in run.data.params.items()}
    facts.update({f"tags.{k}": v for k, v in run.data.tags.items()})
    facts.update({f"metrics.{k}": str(v) for k, v in run.data.metrics.items()})
    facts.update(run_id=run.info.run_id, run_name=run.info.run_name or "", status=run.info.status)
    return facts


def _lookup(facts: Mapping[str, str], key: str) -> str | None:
    """A fact by its full key, else as a param, else as a tag (``clinseg.run_type`` finds the tag)."""
    for candidate in (key, f"params.{key}", f"tags.{key}"):
        if candidate in facts:
            return facts[candidate]
    return None


def _matches(facts: Mapping[str, str], key: str, op: str, value: str) -> bool:
    return (_lookup(facts, key) == value) == (op == "=")


def _apply_filters(runs: Sequence[Any], filters: Sequence[str]) -> list[Any]:
    """The runs every filter keeps; a filter that keeps none of them is an error naming the values that exist."""
    parsed = [parse_filter(f) for f in filters]
    facts = [_flat(r) for r in runs]
    for expr, (key, op, value) in zip(filters, parsed, strict=True):
        if runs and not any(_matches(f, key, op, value) for f in facts):
            values = sorted({v for f in facts if (v := _lookup(f, key)) is not None})
            if not values:
                raise ValueError(
                    f"--filter {expr!r}: none of the {len(runs)} runs has {key!r} "
                    f"(looked for {key}, params.{key} and tags.{key})"
                )
            raise ValueError(f"--filter {expr!r} matches none of the {len(runs)} runs; values of {key}: {values}")
    kept = [r for r, f in zip(runs, facts, strict=True) if all(_matches(f, *p) for p in parsed)]
    if runs and parsed and not kept:
        raise ValueError(f"the filters {list(filters)} together match none of the {len(runs)} runs")
    return kept


def _client(tracking_uri: str | None) -> Any:
    import mlflow

    from pipeline.tracking.store import default_tracking_uri, require_tracking_server

    uri = default_tracking_uri(tracking_uri)
    require_tracking_server(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def find_runs(client: Any, *, experiment: str | None = None, run_ids: Sequence[str] = ()) -> list[Any]:
    """The runs of an experiment (newest first) or the given run ids; errors name what was not found."""
    if bool(experiment) == bool(run_ids):
        raise ValueError("give either an experiment name or run ids (not both, not neither)")
    if run_ids:
        return [client.get_run(r) for r in run_ids]
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"experiment {experiment!r} does not exist; experiments: {names}")
    runs = list(
        client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"], max_results=5000)
    )
    if not runs:
        raise ValueError(f"experiment {experiment!r} holds no runs")
    return runs


def run_type(run: Any) -> str:
    """The run's ``clinseg.run_type`` tag (``training``, ``evaluation``), or ``untagged``."""
    return run.data.tags.get(RUN_TYPE_TAG, UNTAGGED)


@dataclass
class Comparison:
    """One :class:`ComparisonTable` per run type (training and evaluation runs log different things)."""

    tables: dict[str, ComparisonTable]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every table's rows, table by table (each table best first)."""
        return [row for table in self.tables.values() for row in table.rows]

    @property
    def run_ids(self) -> list[str]:
        return [row["run_id"] for row in self.rows]

    def format(self, fmt: str = "table") -> str:
        """``table``/``markdown``: a titled section per run type; ``json``: one list, each row with its
        ``run_type``; ``csv``: one run type only (choose with ``--filter clinseg.run_type=...``)."""
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        if fmt == "json":
            rows = [
                {"run_type": kind, **{c: json_value(r.get(c)) for c in table.columns}}
                for kind, table in self.tables.items()
                for r in table.rows
            ]
            return json.dumps(rows, indent=2)
        if len(self.tables) == 1:
            return next(iter(self.tables.values())).format(fmt)
        if fmt == "csv":
            raise ValueError(
                f"the runs are of several types {sorted(self.tables)} with different columns; CSV holds one: "
                "add --filter clinseg.run_type=TYPE"
            )
        title = "## {} runs ({})" if fmt == "markdown" else "{} runs ({}):"
        return "\n\n".join(
            title.format(kind, len(table.rows)) + "\n" + table.format(fmt) for kind, table in self.tables.items()
        )


def _default_metric(kind: str) -> str:
    return "eval_mean_dice" if kind == "evaluation" else "val_mean_dice"


def compare_runs(
    tracking_uri: str | None = None,
    *,
    experiment: str | None = None,
    run_ids: Sequence[str] = (),
    metric: str | None = None,
    sort: str | None = None,
    filters: Sequence[str] = (),
    columns: Sequence[str] = (),
) -> Comparison:
    """Tables of runs grouped by run type: run id and name, status, duration (s), best/final ``metric`` and the
    params that differ among the runs of the group (not ``config.*``: the config as run is an artifact, and
    runs logged before it was left out of the params flattened hundreds of ``config.*`` ids).

    Args:
        tracking_uri: MLflow store (default: ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
        experiment: compare all runs of this experiment...
        run_ids: ...or these runs.
        metric: metric whose history gives ``best`` (max, or min for losses and distances) and ``final`` (last);
            default ``val_mean_dice`` for training runs, ``eval_mean_dice`` for evaluation runs.
        sort: column to sort by; a leading ``-`` sorts descending (default: best metric, best first).
        filters: ``KEY=VALUE`` / ``KEY!=VALUE`` on ``params.*``, ``tags.*``, ``run_name``, ``status`` (a bare
            key is looked up as given, then as a param, then as a tag); one that matches no run is an error.
        columns: show these columns instead, in this order: names or globs (``run_name``, ``*_best``,
            ``params.roi_size``, a bare ``roi_size`` for a param), any param, differing or not; one that
            matches no column of any table is an error.
    """
    client = _client(tracking_uri)
    runs = _apply_filters(find_runs(client, experiment=experiment, run_ids=run_ids), filters)
    groups: dict[str, list[Any]] = {}
    for run in runs:
        groups.setdefault(run_type(run), []).append(run)
    tables = {
        kind: _table(client, members, metric or _default_metric(kind), every_param=bool(columns))
        for kind, members in sorted(groups.items())
    }
    if columns:
        _choose_columns(tables, list(columns))
    if sort and not any(sort.lstrip("-") in t.columns for t in tables.values()):
        columns = sorted({c for t in tables.values() for c in t.columns})
        raise ValueError(f"--sort {sort.lstrip('-')!r} is not a column; columns: {columns}")
    for table in tables.values():
        if sort and sort.lstrip("-") in table.columns:
            _sort(table, sort)
    return Comparison(tables)


def _differing_params(runs: Sequence[Any]) -> list[str]:
    keys = sorted({k for r in runs for k in r.data.params if not k.startswith("config.")})
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def _choose_columns(tables: Mapping[str, ComparisonTable], patterns: list[str]) -> None:
    """Keep the columns ``patterns`` select in each table; a pattern selecting nothing anywhere is an error."""
    for pattern in patterns:
        if not any(select_columns(t.columns, [pattern]) for t in tables.values()):
            every = sorted({c for t in tables.values() for c in t.columns})
            raise ValueError(f"--columns {pattern!r} matches no column; columns: {every}")
    for table in tables.values():
        table.columns = select_columns(table.columns, patterns)


def _table(client: Any, runs: Sequence[Any], metric: str, every_param: bool = False) -> ComparisonTable:
    lower = any(word in metric for word in _LOWER_IS_BETTER)
    best_col, final_col = f"{metric}_best", f"{metric}_final"
    differing = sorted({k for r in runs for k in r.data.params}) if every_param else _differing_params(runs)
    columns = ["run_id", "run_name", "status", "duration_s", best_col, "best_step", final_col]
    columns += [f"params.{k}" for k in differing]
    table = ComparisonTable(columns)
    for run in runs:
        history = sorted(
            client.get_metric_history(run.info.run_id, metric), key=lambda m: (m.step, m.timestamp)
        )
        best = (min if lower else max)(history, key=lambda m: m.value) if history else None
        end = run.info.end_time
        row = {
            "run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "duration_s": (end - run.info.start_time) / 1000 if end else None,
            best_col: best.value if best else None, "best_step": best.step if best else None,
            final_col: history[-1].value if history else None,
        }  # fmt: skip
        row.update({f"params.{k}": run.data.params.get(k) for k in differing})
        table.rows.append(row)
    _sort(table, best_col if lower else f"-{best_col}")  # best first
    _warn_unsynced(runs)
    return table


def _warn_unsynced(runs: Sequence[Any]) -> None:
    """Warn about runs whose checkpoint folder (on this machine) holds MLflow records not yet replayed."""
    from pipeline.tracking.journal import JOURNAL_DIRNAME, TrackingJournal
    from pipeline.tracking.run_tags import CKPT_DIR_TAG

    for run in runs:
        ckpt_dir = run.data.tags.get(CKPT_DIR_TAG)
        folder = Path(ckpt_dir) / JOURNAL_DIRNAME if ckpt_dir else None
        if folder is None or not (folder / "journal.jsonl").is_file():
            continue
        pending = TrackingJournal(folder, readonly=True).describe_pending()
        if pending:
            logger.warning(
                "run %s is incomplete in MLflow (%s still in %s); replay with: clinseg tracking sync %s",
                run.info.run_name, pending, folder, ckpt_dir,
            )  # fmt: skip


def _sort(table: ComparisonTable, sort: str) -> None:
    descending, column = sort.startswith("-"), sort.lstrip("-")

    def missing(row: dict[str, Any]) -> bool:
        value = row.get(column)
        return value is None or (isinstance(value, float) and math.isnan(value))

    present = sorted((r for r in table.rows if not missing(r)), key=lambda r: r[column], reverse=descending)
    table.rows = present + [r for r in table.rows if missing(r)]


def plot_curves(
    tracking_uri: str | None, run_ids: Sequence[str], out: str | Path, metric: str = "val_mean_dice"
) -> Path:
    """Overlay the ``metric`` history (vs step, i.e. epoch) of the runs in one PNG; returns its path.

    Raises:
        ValueError: none of the runs logged ``metric`` (nothing is written).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transforms.io.atomic import atomic_write

    client = _client(tracking_uri)
    histories = {r: sorted(client.get_metric_history(r, metric), key=lambda m: m.step) for r in run_ids}
    if not any(histories.values()):
        logged = sorted({k for r in run_ids for k in client.get_run(r).data.metrics})
        raise ValueError(
            f"nothing to plot: none of the {len(run_ids)} runs logged {metric!r}; choose a metric with --metric "
            f"(they logged {logged})"
        )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run_id, history in histories.items():
        if history:
            name = client.get_run(run_id).info.run_name or run_id[:8]
            ax.plot([m.step for m in history], [m.value for m in history], marker="o", label=name)
    ax.set_xlabel("step (epoch)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def load_case_table(client: Any, run_id: str) -> list[dict[str, Any]]:
    """The per-case evaluation rows a run logged as ``evaluation/per_case.json``."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, TABLE_ARTIFACT, tmp)
        except Exception as e:  # MLflow raises several types for a missing artifact
            raise ValueError(f"run {run_id} has no per-case evaluation table ({TABLE_ARTIFACT})") from e
        content = json.loads(Path(local).read_text())
    return [dict(zip(content["columns"], row, strict=True)) for row in content["data"]]


def paired_comparison(
    run_a: str,
    run_b: str,
    tracking_uri: str | None = None,
    *,
    metrics: Sequence[str] = ("dice", "hd95_mm"),
    worse_threshold: float = 0.05,
    confidence: float = 0.95,
) -> ComparisonTable:
    """Paired per-case differences ``b - a`` per label and metric from two runs' per-case evaluation tables:
    n, mean difference, t-based confidence interval, Wilcoxon signed-rank p-value and the cases that got worse
    by more than ``worse_threshold`` (in the metric's unit; distances count as worse when they grow).
    """
    client = _client(tracking_uri)
    tables = [load_case_table(client, r) for r in (run_a, run_b)]
    columns = ["label", "metric", "n", "mean_diff", "ci_low", "ci_high", "wilcoxon_p", "worse_cases"]
    result = ComparisonTable(columns)
    labels = sorted({row["name"] for table in tables for row in table})
    for name in labels:
        for metric in metrics:
            a, b = (_scores(t, name, metric) for t in tables)
            s = paired_stats(
                a, b, higher_is_better=not any(w in metric for w in _LOWER_IS_BETTER),
                worse_threshold=worse_threshold, confidence=confidence,
            )  # fmt: skip
            result.rows.append({
                "label": name, "metric": metric, "n": s.n, "mean_diff": s.mean_difference, "ci_low": s.ci_low,
                "ci_high": s.ci_high, "wilcoxon_p": s.wilcoxon_p, "worse_cases": s.worse,
            })  # fmt: skip
    return result


def _scores(table: Sequence[Mapping[str, Any]], name: str, metric: str) -> dict[str, float]:
    scores = {}
    for row in table:
        if row["name"] == name:
            if metric not in row:
                raise ValueError(f"per-case table has no metric {metric!r}; columns: {sorted(row)}")
            value = row[metric]
            scores[str(row["case"])] = math.nan if value is None else float(value)
    return scores
