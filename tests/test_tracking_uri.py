"""One tracking-URI precedence: an explicit URI, then MLFLOW_TRACKING_URI, then a fallback, then ./mlflow.db."""

from __future__ import annotations

import pytest

from pipeline.core.tracking_uri import resolve_tracking_uri
from pipeline.tracking.store import default_tracking_uri, require_tracking_server

ENV = "http://env-server:5000"
EXPLICIT = "sqlite:////tmp/explicit/mlflow.db"
FALLBACK = ("sqlite:////tmp/trained/mlflow.db", "the training run's store")


@pytest.mark.parametrize(
    ("explicit", "env", "fallback", "expected", "reason"),
    [
        (EXPLICIT, ENV, FALLBACK, EXPLICIT, "--tracking-uri"),
        (EXPLICIT, None, None, EXPLICIT, "--tracking-uri"),
        (None, ENV, FALLBACK, ENV, "MLFLOW_TRACKING_URI"),
        ("", ENV, None, ENV, "MLFLOW_TRACKING_URI"),
        (None, None, FALLBACK, FALLBACK[0], FALLBACK[1]),
        (None, "", FALLBACK, FALLBACK[0], FALLBACK[1]),
        (None, None, None, "workdir", "default store"),
    ],
)  # fmt: skip
def test_explicit_wins_then_environment_then_fallback_then_default(
    tmp_path, monkeypatch, explicit, env, fallback, expected, reason
):
    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    uri, why = resolve_tracking_uri(explicit, fallback=fallback, workdir=tmp_path)
    assert uri == (f"sqlite:///{tmp_path.resolve()}/mlflow.db" if expected == "workdir" else expected)
    assert reason in why
    if fallback is None:
        assert default_tracking_uri(explicit, workdir=tmp_path) == uri


def test_the_environment_is_read_at_call_time_not_import(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://first:5000")
    assert default_tracking_uri(workdir=tmp_path) == "http://first:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://second:5000")
    assert default_tracking_uri(workdir=tmp_path) == "http://second:5000"


def test_reachability_checks_the_explicit_store_not_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9/unreachable")
    db = tmp_path / "store" / "mlflow.db"
    require_tracking_server(f"sqlite:///{db}", timeout=0.5)  # would fail on the environment's server
    assert db.parent.is_dir()


@pytest.mark.parametrize("env", [None, "http://127.0.0.1:9"])
def test_the_resilient_handler_logs_to_the_explicit_store_whatever_the_environment(tmp_path, monkeypatch, env):
    from pipeline.tracking.mlflow_handler import ResilientMLFlowHandler

    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    explicit = f"sqlite:///{tmp_path / 'mlflow.db'}"
    handler = ResilientMLFlowHandler(tracking_uri=explicit, journal_dir=str(tmp_path / "journal"))
    assert handler.tracking_uri == explicit
