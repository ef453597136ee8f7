"""clinseg compare: runs grouped by type, differing params, best/final metrics, sort/filter/formats, curve plot,
paired statistics, and clear refusals (filters matching nothing, plots without curves)."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.entities import Metric, Param, RunTag

from pipeline.cli import main
from pipeline.evaluation.compare import compare_runs, paired_comparison, parse_filter, plot_curves
from pipeline.tracking.run_tags import RUN_TYPE_TAG

CURVES = {"a": [0.2, 0.6, 0.5], "b": [0.3, 0.4, 0.7], "c": [0.1, 0.2, 0.3]}
NETWORK = {"a": "res_unet", "b": "res_unet", "c": "unet"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three training runs with val_mean_dice curves and their config as run (raw, as MLflow stores it) and two
    evaluation runs with per-case tables, each tagged with its run type."""
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
            Param("config.lr", "0.003" if name != "b" else "0.01"),  # raw twin of the evaluated knob
            Param("config.amp", "$torch.cuda.is_available()"),  # same expression everywhere: not a difference
            Param("config.max_epochs", "3"),
            *[Param(f"config.train.handlers.{i}.path", f"/runs/{name}/{'x' * 60}/{i}") for i in range(100)],
        ]
        metrics = [Metric("val_mean_dice", v, 1000 + i, i + 1) for i, v in enumerate(curve)]
        tags = [RunTag(RUN_TYPE_TAG, "training")]
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        client.set_terminated(run.info.run_id)
        ids[name] = run.info.run_id
    dice_a = [0.80, 0.70, 0.90, 0.60, 0.85, 0.75]
    dice_b = [0.85, 0.76, 0.95, 0.40, 0.90, 0.80]  # better except case_3
    for name, dice in (("eval_a", dice_a), ("eval_b", dice_b)):
        run = client.create_run(exp, run_name=name)
        cases = [f"case_{i}" for i in range(6)]
        table = {"case": cases, "label": [1] * 6, "name": ["organ"] * 6, "dice": dice, "hd95_mm": [2.0] * 6}
        client.log_table(run.info.run_id, data=table, artifact_file="evaluation/per_case.json")
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("eval_mean_dice", sum(dice) / 6, 1000, 0)],
            params=[Param("split", "test"), Param("checkpoints", f"/runs/{name}/model.pt")],
            tags=[RunTag(RUN_TYPE_TAG, "evaluation")],
        )
        client.set_terminated(run.info.run_id)
        ids[name] = run.info.run_id
    return uri, ids


def test_table_lists_differing_params_best_and_final(store):
    uri, ids = store
    table = compare_runs(uri, run_ids=[ids["a"], ids["b"], ids["c"]]).tables["training"]
    assert [c for c in table.columns if c.startswith("params.")] == ["params.lr", "params.network"]
    assert [r["run_name"] for r in table.rows] == ["b", "a", "c"]  # best val_mean_dice first
    by_name = {r["run_name"]: r for r in table.rows}
    assert by_name["a"]["val_mean_dice_best"] == 0.6 and by_name["a"]["best_step"] == 2
    assert by_name["a"]["val_mean_dice_final"] == 0.5
    assert by_name["a"]["status"] == "FINISHED" and by_name["a"]["duration_s"] >= 0


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_default_output_fits_a_terminal(store, fmt):
    """100 differing config.* params of old runs (paths 70+ characters) stay out; no line is ever thousands wide."""
    uri, ids = store
    text = compare_runs(uri, run_ids=[ids["a"], ids["b"], ids["c"]]).format(fmt)
    assert "config." not in text
    assert max(len(line) for line in text.splitlines()) < 200


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["run_name", "val_mean_dice_best"], ["run_name", "val_mean_dice_best"]),
        (["run_name", "seed"], ["run_name", "params.seed"]),  # a bare name is a param, equal or not
        (["run_name", "params.n*"], ["run_name", "params.network"]),
        (["*_final", "run_name", "run_name"], ["val_mean_dice_final", "run_name"]),
    ],
)
def test_columns_choose_what_is_shown(store, columns, expected):
    uri, ids = store
    table = compare_runs(uri, run_ids=[ids["a"], ids["b"]], columns=columns).tables["training"]
    assert table.columns == expected
    assert table.format("csv").splitlines()[0] == ",".join(expected)


def test_long_cells_are_cut_in_tables_not_in_csv(store):
    uri, ids = store
    table = compare_runs(uri, run_ids=[ids["a"]], columns=["run_name", "config.train.handlers.0.path"]).tables[
        "training"
    ]
    assert "…" in table.format("table") and "…" not in table.format("csv")
    assert max(len(line) for line in table.format("markdown").splitlines()) < 80


def test_filter_sort_and_formats(store):
    uri, ids = store
    comparison = compare_runs(
        uri, run_ids=[ids["a"], ids["b"], ids["c"]], filters=["params.network=res_unet"], sort="run_name"
    )
    table = comparison.tables["training"]
    assert [r["run_name"] for r in table.rows] == ["a", "b"]
    assert "params.network" not in table.columns  # equal in what is left
    descending = compare_runs(uri, run_ids=[ids["a"], ids["c"]], sort="-run_name").tables["training"]
    assert [r["run_name"] for r in descending.rows] == ["c", "a"]
    assert [r["run_name"] for r in json.loads(comparison.format("json"))] == ["a", "b"]
    assert table.format("csv").splitlines()[0].startswith("run_id,run_name,status")
    assert table.format("markdown").splitlines()[1].startswith("|---|")
    assert "0.7" in table.format("table")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"filters": ["network"]}, "KEY=VALUE"),
        ({"sort": "nope"}, "not a column"),
        ({"columns": ["run_name", "nope*"]}, "'nope\\*' matches no column; columns: .*run_name"),
        ({"experiment": "missing"}, "does not exist"),
    ],
)
def test_bad_requests_name_the_problem(store, kwargs, match):
    uri, ids = store
    kwargs = {"run_ids": [ids["a"]], **kwargs} if "experiment" not in kwargs else kwargs
    with pytest.raises(ValueError, match=match):
        compare_runs(uri, **kwargs)


def test_training_and_evaluation_runs_are_compared_apart(store):
    uri, _ = store
    comparison = compare_runs(uri, experiment="cmp")
    assert sorted(comparison.tables) == ["evaluation", "training"]
    training, evaluation = comparison.tables["training"], comparison.tables["evaluation"]
    assert [c for c in training.columns if c.startswith("params.")] == ["params.lr", "params.network"]
    assert [c for c in evaluation.columns if c.startswith("params.")] == ["params.checkpoints"]
    assert "eval_mean_dice_best" in evaluation.columns  # each type with its own default metric
    assert [r["run_name"] for r in evaluation.rows] == ["eval_b", "eval_a"]
    text = comparison.format("table")
    assert "training runs (3):" in text and "evaluation runs (2):" in text and "config.amp" not in text
    rows = json.loads(comparison.format("json"))
    assert {(r["run_type"], r["run_name"]) for r in rows} >= {("training", "a"), ("evaluation", "eval_a")}
    with pytest.raises(ValueError, match="clinseg.run_type"):
        comparison.format("csv")  # one CSV holds one column set


@pytest.mark.parametrize(
    ("filters", "match"),
    [
        (["clinseg.run_type=evalution"], r"matches none of the 5 runs; values of clinseg.run_type: \[.evaluation"),
        (["clinseg.runtype=training"], "none of the 5 runs has 'clinseg.runtype'"),
        (["network=unet", "lr=0.01"], "together match none"),
    ],
)  # fmt: skip
def test_a_filter_matching_nothing_is_an_error_listing_the_values(store, filters, match):
    uri, _ = store
    with pytest.raises(ValueError, match=match):
        compare_runs(uri, experiment="cmp", filters=filters)


def test_a_bare_key_filters_on_the_run_type_tag(store):
    uri, _ = store
    comparison = compare_runs(uri, experiment="cmp", filters=["clinseg.run_type=evaluation"])
    assert list(comparison.tables) == ["evaluation"]
    assert comparison.format("csv").splitlines()[0].startswith("run_id,run_name,status")


def test_plot_without_curves_is_refused_and_writes_nothing(store, tmp_path):
    uri, ids = store
    with pytest.raises(ValueError, match="nothing to plot: none of the 2 runs logged 'val_mean_dice'"):
        plot_curves(uri, [ids["eval_a"], ids["eval_b"]], tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def test_cli_refusals_exit_non_zero(store, tmp_path, caplog):
    uri, _ = store
    args = ["compare", "--experiment", "cmp", "--tracking-uri", uri]
    assert main([*args, "--filter", "clinseg.run_type=train"]) == 2
    assert "values of clinseg.run_type: ['evaluation', 'training']" in caplog.text
    assert main([*args, "--filter", "clinseg.run_type=evaluation", "--plot", str(tmp_path / "c.png")]) == 2
    assert "nothing to plot" in caplog.text and not (tmp_path / "c.png").exists()


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
    code = main(["compare", "--runs", ids["a"], ids["b"], "--tracking-uri", uri, "--format", "csv",
                 "--columns", "run_name,lr"])  # fmt: skip
    assert code == 0 and capsys.readouterr().out.splitlines()[0] == "run_name,params.lr"
    code = main(["compare", "--runs", ids["eval_a"], ids["eval_b"], "--tracking-uri", uri, "--paired",
                 "--metric", "none", "--format", "csv"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "paired per-case differences" in out and "case_3" in out
