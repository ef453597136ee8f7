"""An ``MLFlowHandler`` whose tracking survives the server going away: every call is journaled on disk beside the
run's checkpoints first (:mod:`pipeline.tracking.journal`), then replayed to MLflow in order and exactly once
(:mod:`pipeline.tracking.sync`) as soon as the server answers, at the end of training, or by
``clinseg tracking sync RUN_DIR``. The run's final status (FINISHED, FAILED, KILLED) is always journaled.

Use it in a bundle like MONAI's handler (``_target_: pipeline.tracking.mlflow_handler.ResilientMLFlowHandler``) with a
``journal_dir``; it also accepts ``tags`` (e.g. from :func:`pipeline.tracking.run_tags.run_tags`), set when the run starts.

With ``python -m monai.bundle run ... --tracking mlflow`` MONAI appends its own ``MLFlowHandler`` to the same
engines (same store and run): this handler detaches it, so every value is logged once, and logs its artifacts
(the executed config) itself.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler
from monai.utils import flatten_dict

from pipeline.tracking.store import default_tracking_uri, new_run_name
from pipeline.tracking.journal import TrackingJournal, open_run_journal
from pipeline.tracking.run_tags import run_page_url
from pipeline.tracking.sync import JournalReplayer, SyncPolicy, shared_replayer

logger = logging.getLogger(__name__)


def _owner(func: Any) -> Any:
    parent = getattr(func, "_parent", None)  # ignite wraps handlers of filtered events and keeps a weakref
    return getattr(parent() if parent is not None else func, "__self__", None)


def _sigterm_as_interrupt() -> Any:
    """Make SIGTERM raise ``KeyboardInterrupt`` (so the run ends KILLED); returns the previous handler or None."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    ):
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, interrupt)


class ResilientMLFlowHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` writing to a durable journal that is replayed to MLflow (see module docstring).

    The handler with ``close_on_complete`` owns the run: it ends it FINISHED at ``COMPLETED``, FAILED on an
    exception and KILLED on ``KeyboardInterrupt`` or SIGTERM, and then waits for the replay (bounded by the
    outage budget); what is still unsynced is named in a warning. Handlers of one run (trainer, validator)
    share the journal. A metric (key, step) is logged once, so a resumed run logs no step twice.

    Args:
        journal_dir: the run's journal folder, e.g. ``<ckpt_dir>/mlflow_journal``.
        tags: run tags set when the run starts (e.g. bundle, git commit, dataset fingerprint, fold).
        request_timeout: seconds per HTTP request to the tracking server (no retries while it is down).
        outage_budget_s: total seconds failed replay attempts may cost this process.
        args, kwargs: passed to ``MLFlowHandler``.
    """

    def __init__(
        self,
        *args: Any,
        journal_dir: str,
        tags: Mapping[str, Any] | None = None,
        request_timeout: float = 5.0,
        outage_budget_s: float = 45.0,
        **kwargs: Any,
    ) -> None:
        explicit = kwargs.get("tracking_uri", args[0] if args else None)
        super().__init__(*args, **kwargs)
        self.journal_dir = str(journal_dir)
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.policy = SyncPolicy(request_timeout=request_timeout, outage_budget_s=outage_budget_s)
        # every call goes through the journal to this store: an explicit URI wins over MLFLOW_TRACKING_URI
        # (MONAI's own client lets the environment win; it is not used for logging here)
        self.tracking_uri = default_tracking_uri(explicit)
        self.run_name = self.run_name or new_run_name("run")
        self._replayer: JournalReplayer | None = None
        self._previous_sigterm: Any = None
        self._in_event = False

    @property
    def journal(self) -> TrackingJournal:
        return self.replayer.journal

    @property
    def replayer(self) -> JournalReplayer:
        if self._replayer is None:
            open_run_journal(self.journal_dir, self.run_name)
            self._replayer = shared_replayer(self.journal_dir)
            self._replayer.policy = self.policy
        return self._replayer

    def attach(self, engine: Engine) -> None:
        self._detach_other_mlflow_handlers(engine)
        super().attach(engine)
        if self.close_on_complete:
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)
            # first, so the status is journaled even when another handler re-raises before it would run
            handlers = engine._event_handlers[Events.EXCEPTION_RAISED]
            handlers.insert(0, handlers.pop())

    def _detach_other_mlflow_handlers(self, engine: Engine) -> None:
        """Remove MLflow handlers of other classes (MONAI's ``--tracking mlflow``) from ``engine``, in place:
        during ``STARTED`` the engine is iterating these lists, and theirs come after ours."""
        detached = False
        for handlers in engine._event_handlers.values():
            for entry in list(handlers):
                other = _owner(entry[0])
                if isinstance(other, MLFlowHandler) and not isinstance(other, ResilientMLFlowHandler):
                    handlers.remove(entry)
                    detached = True
                    if self.close_on_complete:  # e.g. the executed config MONAI would have logged
                        extra = tuple(a for a in other.artifacts if a)
                        self.artifacts = tuple(dict.fromkeys((*self.artifacts, *extra)))
        if detached:
            logger.info("%s detached MONAI's MLFlowHandler from the %s: it logs this run alone",
                        type(self).__name__, type(engine).__name__)  # fmt: skip

    def start(self, engine: Engine) -> None:
        self._detach_other_mlflow_handlers(engine)
        journal = self.journal
        if self.close_on_complete or not journal.started:
            journal.open_run(self.tracking_uri, self.experiment_name, self.run_name)
            journal.log_tags(self.tags)
            if self.close_on_complete:
                self._previous_sigterm = _sigterm_as_interrupt()
        elif self.tags:
            journal.log_tags(self.tags)
        if self.experiment_param:
            journal.log_params(self.experiment_param)
        journal.log_params({attr: getattr(engine.state, attr, None) for attr in self.default_tracking_params})
        self.replayer.flush()

    def _log_params(self, params: dict[str, Any]) -> None:
        self.journal.log_params(params)

    def _log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = {}
        for key, value in flatten_dict(metrics).items():
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                logger.debug("metric %s is not a number (%r), not logged", key, value)
        self.journal.log_metrics(values, step or 0)
        if not self._in_event:
            self.replayer.flush()

    def iteration_completed(self, engine: Engine) -> None:
        self._flush_after(super().iteration_completed, engine)

    def epoch_completed(self, engine: Engine) -> None:
        self._flush_after(super().epoch_completed, engine)

    def _flush_after(self, log: Any, engine: Engine) -> None:
        """Journal all values of one event (loss, lr, ...), then replay them in one request."""
        self._in_event = True
        try:
            log(engine)
        finally:
            self._in_event = False
        self.replayer.flush()

    def complete(self) -> None:
        for path in self._parse_artifacts():
            self.journal.log_artifact(path)
        self.replayer.flush()

    def close(self) -> None:
        self.journal.set_status("FINISHED")
        self._finish()

    def _failed(self, engine: Engine, error: BaseException) -> None:
        self.journal.set_status("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        self._finish()
        if len(engine._event_handlers[Events.EXCEPTION_RAISED]) == 1:
            raise error  # ignite re-raises only when no handler is attached; the others re-raise themselves

    def _finish(self) -> None:
        """Replay what is pending (bounded by the outage budget); warn with what stays in the journal."""
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        self.cur_run = None
        if self.replayer.flush(wait=True):
            state = self.journal.state
            url = run_page_url(self.replayer.tracking_uri, state.get("experiment_id", ""), state.get("run_id"))
            if url:
                logger.info("MLflow run %s: %s", self.run_name, url)
        else:
            logger.warning(
                "MLflow run %s: %s not yet in %s (%s); they are kept in %s, replay with: clinseg tracking sync %s",
                self.run_name, self.journal.describe_pending(), self.replayer.tracking_uri,
                self.replayer.last_error or "not attempted", self.journal.folder, self.journal.folder.parent,
            )  # fmt: skip
