"""The one MLflow tracking-URI resolver, and the embedded default store (SQLite in the working directory).

It lives in core, not in ``pipeline.tracking``, because the ``models:/`` registry lookup in
:mod:`pipeline.core.model_uri` needs the same precedence and core imports no wing.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_DB", "resolve_tracking_uri", "sqlite_uri"]

DEFAULT_DB = "mlflow.db"


def sqlite_uri(db_path: str | Path) -> str:
    """``sqlite:////abs/path/mlflow.db`` for a database file (its folder is created)."""
    db_path = Path(db_path).resolve()
    db_path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db_path}"


def resolve_tracking_uri(
    explicit: str | None = None,
    *,
    fallback: tuple[str, str] | None = None,
    workdir: str | Path | None = None,
) -> tuple[str, str]:
    """The MLflow store to use and why, in the one precedence every caller follows.

    An explicit URI (flag, argument, ``--set tracking_uri=...``) always wins; then ``MLFLOW_TRACKING_URI``
    (read here, at call time, never at import); then ``fallback`` (e.g. the store a checkpoint's training run
    recorded); then a SQLite store ``<workdir>/mlflow.db``. MLflow 3 refuses the old ``./mlruns`` file store
    and MONAI's ``MLFlowHandler`` refuses ``file:`` URIs, so the embedded default is SQLite, MLflow's own.

    Args:
        explicit: the URI asked for, or None/"" for none.
        fallback: ``(uri, reason)`` used before the default when neither of the above is set.
        workdir: folder of the default store (default: the working directory).

    Returns:
        ``(uri, reason)``, e.g. ``("http://mlflow:5000", "MLFLOW_TRACKING_URI")``.
    """
    if explicit:
        return str(explicit), "--tracking-uri"
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env, "MLFLOW_TRACKING_URI"
    if fallback is not None and fallback[0]:
        return fallback
    return sqlite_uri(Path(workdir or os.getcwd()) / DEFAULT_DB), "the default store in the working directory"
