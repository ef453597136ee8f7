"""An ``MLFlowHandler`` that survives a tracking server dropping mid-run: training goes on, the failure is logged
once, every later MLflow call becomes a no-op; checkpoints and the rest of the training are untouched.

Use it in a bundle exactly like MONAI's handler (``_target_: pipeline.resilient_mlflow.ResilientMLFlowHandler``);
it also accepts ``tags`` (e.g. from :func:`pipeline.run_tags.run_tags`), set on the run when it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ignite.engine import Engine
from monai.handlers import MLFlowHandler

from pipeline.tracking import TrackingUnavailableError, require_tracking_server

logger = logging.getLogger(__name__)

# Stores found dead in this process, keyed by (tracking URI, run name): the trainer's and the validator's handlers
# share a run, so whichever meets the failure first silences the other and the warning is logged once.
_BROKEN: set[tuple[str, str]] = set()


@contextlib.contextmanager
def _http_limits(max_retries: int, timeout: int) -> Iterator[None]:
    """Bound MLflow's HTTP retries/timeout for one call (MLflow reads these per request) unless the user set them."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}
    added = [name for name in names if name not in os.environ]
    os.environ.update({name: names[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


class ResilientMLFlowHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` whose MLflow calls stop, after one warning, once the tracking server is gone.

    A failed call is attributed to the server when its ``/health`` endpoint no longer answers; then the handler
    (and any other handler of the same run in this process) logs one warning and does nothing more. Errors with a
    reachable server or a SQLite store are raised as usual.

    Args:
        tags: run tags set when the run starts (e.g. bundle, git commit, dataset fingerprint, fold).
        max_retries: HTTP retries per MLflow call (MLflow's default, 7 with exponential backoff, would stall
            training for minutes on a dead server); ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` wins when set.
        request_timeout: seconds per HTTP request; ``MLFLOW_HTTP_REQUEST_TIMEOUT`` wins when set.
        args, kwargs: passed to ``MLFlowHandler``.
    """

    def __init__(
        self,
        *args: Any,
        tags: Mapping[str, Any] | None = None,
        max_retries: int = 2,
        request_timeout: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.max_retries = int(max_retries)
        self.request_timeout = int(request_timeout)
        self._key = (str(self.client.tracking_uri), str(self.run_name))

    @property
    def disabled(self) -> bool:
        """True once the tracking server of this run was found gone."""
        return self._key in _BROKEN

    def _guard(self, call: Callable[..., Any], *args: Any) -> Any:
        if self.disabled:
            return None
        try:
            with _http_limits(self.max_retries, self.request_timeout):
                return call(*args)
        except Exception as error:
            uri = self._key[0]
            if not uri.startswith(("http://", "https://")):
                raise
            try:
                require_tracking_server(uri, timeout=self.request_timeout)
            except TrackingUnavailableError:
                _BROKEN.add(self._key)
                logger.warning(
                    "MLflow tracking server %s stopped answering (%s: %s); training goes on without tracking, "
                    "checkpoints are still written",
                    uri, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "",
                )  # fmt: skip
                return None
            raise

    def _start_and_tag(self, engine: Engine) -> None:
        super().start(engine)
        if self.tags and self.cur_run is not None:
            from mlflow.entities import RunTag

            tags = [RunTag(k, v) for k, v in self.tags.items()]
            self.client.log_batch(run_id=self.cur_run.info.run_id, metrics=[], params=[], tags=tags)

    def start(self, engine: Engine) -> None:
        self._guard(self._start_and_tag, engine)

    def _log_params(self, params: dict[str, Any]) -> None:
        """Params not yet on the run (a resumed run keeps its first values), at most 100 per request (MLflow's cap)."""
        if self.cur_run is None:
            raise ValueError("Current Run is not Active to log params")
        logged = self.client.get_run(self.cur_run.info.run_id).data.params
        from mlflow.entities import Param

        new = [Param(k, str(v)) for k, v in params.items() if k not in logged]
        for start in range(0, len(new), 100):
            self.client.log_batch(run_id=self.cur_run.info.run_id, metrics=[], params=new[start : start + 100], tags=[])

    def iteration_completed(self, engine: Engine) -> None:
        self._guard(super().iteration_completed, engine)

    def epoch_completed(self, engine: Engine) -> None:
        self._guard(super().epoch_completed, engine)

    def complete(self) -> None:
        self._guard(super().complete)

    def close(self) -> None:
        if self.disabled:
            self.cur_run = None
            self._dispose_sqlite_store()
            return
        self._guard(super().close)
