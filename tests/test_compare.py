"""clinseg compare: differing params, best/final metrics, sort/filter/formats, curve plot, paired statistics."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.entities import Metric, Param

from pipeline.cli import main
from pipeline.compare import compare_runs, paired_comparison, parse_filter, plot_curves

CURVES = {"a": [0.2, 0.6, 0.5], "b": [0.3, 0.4, 0.7], "c": [0.1, 0.2, 0.3]}
NETWORK = {"a": "res_unet", "b": "res_unet", "c": "unet"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three training runs with val_mean_dice curves and two evaluation runs with per-case tables."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("cmp", artifact_location=(root / "mlruns").as_uri())
    ids = {}
    for name, curve in CURVES.items():
        run = client.create_run(exp, run_name=name)
        params = [
            Param("network", NETWORK[name]),
            Param("seed", "0"),
            Param("lr", "0.003" if name != "b" else "0.01"),
        ]
        metrics = [Metric("val_mean_dice", v, 1000 + i, i + 1) for i, v in enumerate(curve)]
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id)
        ids[name] = run.info.run_id
    dice_a = [0.80, 0.70, 0.90, 0.60, 0.85, 0.75]
    dice_b = [0.85, 0.76, 0.95, 0.40, 0.90, 0.80]  # better except case_3
    for name, dice in (("eval_a", dice_a), ("eval_b", dice_b)):
        run = client.create_run(exp, run_name=name)
        cases = [f"case_{i}" for i in range(6)]
        table = {"case": cases, "label": [1] * 6, "name": ["organ"] * 6, "dice": dice, "hd95_mm": [2.0] * 6}
        client.log_table(run.info.run_id, data=table, artifact_file="evaluation/per_case.json")
        client.set_terminated(run.info.run_id)
        ids[name] = run.info.run_id
    return uri, ids


def test_table_lists_differing_params_best_and_final(store):
    uri, ids = store
    table = compare_runs(uri, run_ids=[ids["a"], ids["b"], ids["c"]])
    assert {"params.network", "params.lr"} <= set(table.columns) and "params.seed" not in table.columns
    assert [r["run_name"] for r in table.rows] == ["b", "a", "c"]  # best val_mean_dice first
    by_name = {r["run_name"]: r for r in table.rows}
    assert by_name["a"]["val_mean_dice_best"] == 0.6 and by_name["a"]["best_step"] == 2
    assert by_name["a"]["val_mean_dice_final"] == 0.5
    assert by_name["a"]["status"] == "FINISHED" and by_name["a"]["duration_s"] >= 0


def test_filter_sort_and_formats(store):
    uri, ids = store
    table = compare_runs(
        uri, run_ids=[ids["a"], ids["b"], ids["c"]], filters=["params.network=res_unet"], sort="run_name"
    )
    assert [r["run_name"] for r in table.rows] == ["a", "b"]
    assert "params.network" not in table.columns  # equal in what is left
    assert [
        r["run_name"] for r in compare_runs(uri, run_ids=[ids["a"], ids["c"]], sort="-run_name").rows
    ] == ["c", "a"]
    assert [r["run_name"] for r in json.loads(table.format("json"))] == ["a", "b"]
    assert table.format("csv").splitlines()[0].startswith("run_id,run_name,status")
    assert table.format("markdown").splitlines()[1].startswith("|---|")
    assert "0.7" in table.format("table")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"filters": ["network"]}, "KEY=VALUE"),
        ({"sort": "nope"}, "not a column"),
        ({"experiment": "missing"}, "does not exist"),
    ],
)
def test_bad_requests_name_the_problem(store, kwargs, match):
    uri, ids = store
    kwargs = {"run_ids": [ids["a"]], **kwargs} if "experiment" not in kwargs else kwargs
    with pytest.raises(ValueError, match=match):
        compare_runs(uri, **kwargs)


def test_parse_filter():
    assert parse_filter("params.network != unet") == ("params.network", "!=", "unet")


def test_plot_overlays_curves(store, tmp_path):
    uri, ids = store
    out = plot_curves(uri, [ids["a"], ids["b"]], tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paired_comparison_of_evaluation_tables(store):
    uri, ids = store
    paired = paired_comparison(ids["eval_a"], ids["eval_b"], uri, worse_threshold=0.1)
    dice = next(r for r in paired.rows if r["metric"] == "dice")
    assert dice["n"] == 6 and dice["mean_diff"] == pytest.approx((0.05 + 0.06 + 0.05 - 0.2 + 0.05 + 0.05) / 6)
    assert dice["ci_low"] < dice["mean_diff"] < dice["ci_high"] and 0 < dice["wilcoxon_p"] <= 1
    assert dice["worse_cases"] == ["case_3"]
    with pytest.raises(ValueError, match="no per-case evaluation table"):
        paired_comparison(ids["a"], ids["eval_b"], uri)


def test_cli_compare_experiment_plot_and_paired(store, tmp_path, capsys):
    uri, ids = store
    code = main(["compare", "--experiment", "cmp", "--tracking-uri", uri, "--format", "markdown",
                 "--plot", str(tmp_path / "c.png")])  # fmt: skip
    assert code == 0 and (tmp_path / "c.png").is_file()
    assert f"| {ids['b']} | b | FINISHED |" in capsys.readouterr().out
    code = main(["compare", "--runs", ids["eval_a"], ids["eval_b"], "--tracking-uri", uri, "--paired",
                 "--metric", "none", "--format", "csv"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "paired per-case differences" in out and "case_3" in out
