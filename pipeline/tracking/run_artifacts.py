"""End-of-training MLflow artifacts: TorchScript export, training curves, validation overlays, PyTorch-flavour model.

:class:`RunArtifactsHandler` is attached to the trainer (rank 0 only) *before* the trainer's MLflow handler, so
at ``Events.COMPLETED`` its artifacts are journaled before the run's final status. They go through the run's
durable journal (:mod:`pipeline.tracking.journal`), so a tracking server that is down gets them later; the
curves are drawn from the journaled metrics, not read back from the server. Everything is built from the best
checkpoint on disk (``model.pt``), never from the live network (which may be wrapped by DDP). A failure is
logged once as a warning and never fails the training.

Artifacts of a run::

    model/model.ts            TorchScript of the best checkpoint (torch.jit.load, no clinseg needed)
    (logged model)            the same scripted network in MLflow's PyTorch flavour, an MLflow 3 LoggedModel named
                              ``pytorch_model`` of the run (its "Logged models"; ``mlflow.pytorch.load_model``
                              of ``runs:/<run_id>/pytorch_model`` or ``models:/<model_id>``)
    curves/loss.png           training loss per epoch
    curves/validation.png     per-class validation Dice and the learning rate vs epoch
    overlays/<case>.png       prediction over ground truth, case id and Dice, of the first validation cases
                              (:mod:`pipeline.tracking.overlays`; case ids, never patient names)
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from pipeline.core.checkpoint import network_from_checkpoint
from pipeline.tracking.journal import open_journal
from pipeline.tracking.overlays import render_validation_overlays

__all__ = [
    "RunArtifactsHandler",
    "epoch_loss_points",
    "export_torchscript",
    "log_logged_model",
    "log_pytorch_model",
    "plot_training_curves",
    "register_model_version",
    "save_pytorch_model",
]

logger = logging.getLogger(__name__)

Points = list[tuple[float, float]]


def export_torchscript(network: nn.Module, path: str | Path) -> torch.jit.ScriptModule:
    """Script ``network`` (eval mode) with ``torch.jit.script``, save it to ``path`` and return the scripted module."""
    scripted = torch.jit.script(network.eval())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))
    return scripted


def epoch_loss_points(history: Sequence[Any], epoch_length: int, mixed: bool) -> Points:
    """``(epoch, loss)`` points of a run's training-loss metric history (MLflow ``Metric`` objects).

    When the trainer's MLflow handler logs the per-iteration loss under the same key as the per-epoch mean
    (``mixed``; e.g. ``tag_name: train_loss`` and key metric ``train_loss``), one history holds both: step =
    iteration for the former, step = epoch for the latter. The per-epoch value of epoch ``e`` is logged right
    after the loss of iteration ``e * epoch_length``, which tells them apart (resumed runs included).

    Args:
        history: ``client.get_metric_history(run_id, key)``, in logging order.
        epoch_length: iterations per epoch.
        mixed: whether per-iteration values share the key.
    """
    if epoch_length < 1:
        raise ValueError(f"epoch_length must be >= 1, got {epoch_length}")
    ordered = sorted(history, key=lambda m: m.timestamp)  # stable: logging order breaks timestamp ties
    if not mixed:
        found = {int(m.step): float(m.value) for m in ordered}
        return sorted((float(e), v) for e, v in found.items())
    found = {}
    last_iteration = 0
    for metric in ordered:
        if last_iteration > 0 and int(metric.step) * epoch_length == last_iteration:
            found[int(metric.step)] = float(metric.value)
        else:
            last_iteration = int(metric.step)
    return sorted((float(e), v) for e, v in found.items())


def _figure(width: float = 7.0, height: float = 4.0) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_training_curves(
    histories: Mapping[str, Sequence[Any]],
    out_dir: str | Path,
    epoch_length: int,
    *,
    loss_metric: str = "train_loss",
    iteration_loss_metric: str = "train_loss_iter",
    lr_metric: str = "lr_group_0",
    dice_prefix: str = "val_dice_",
    mean_dice_metric: str = "val_mean_dice",
) -> list[Path]:
    """Training-curve PNGs from a run's metric histories (resumed runs show every epoch).

    Args:
        histories: metric key -> values in logging order (objects with ``value``, ``step``, ``timestamp``, such
            as MLflow's ``Metric``), e.g. ``TrackingJournal.metric_histories()``.
        out_dir: folder for ``loss.png`` and ``validation.png``.
        epoch_length: trainer iterations per epoch (per-iteration metrics are drawn at ``iteration / length``).
        loss_metric: per-epoch mean training loss; iteration_loss_metric: per-iteration loss key.
        lr_metric: per-iteration learning rate (MONAI's ``MLFlowHandler`` logs ``lr_group_0``).
        dice_prefix: per-class validation Dice keys; mean_dice_metric: the key metric.

    Returns:
        The PNGs written (none for a run without these metrics).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = {key for key, history in histories.items() if history}
    written = []
    if loss_metric in keys:
        points = epoch_loss_points(
            histories[loss_metric],
            epoch_length,
            mixed=loss_metric == iteration_loss_metric,
        )
        fig, ax = _figure()
        if points:
            ax.plot(*zip(*points), marker="o", label=loss_metric)
        ax.set(xlabel="epoch", ylabel="training loss", title="training loss per epoch")
        ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / "loss.png"))
    dice_keys = sorted(k for k in keys if k.startswith(dice_prefix)) + sorted(
        k for k in keys if k == mean_dice_metric
    )
    if dice_keys:
        fig, ax = _figure()
        for key in dice_keys:
            history = sorted(histories[key], key=lambda m: m.step)
            style = {"linestyle": "--", "color": "black"} if key == mean_dice_metric else {}
            ax.plot(
                [m.step for m in history],
                [m.value for m in history],
                marker="o",
                label=key.removeprefix(dice_prefix),
                **style,
            )
        ax.set(
            xlabel="epoch",
            ylabel="validation Dice",
            ylim=(0.0, 1.0),
            title="validation Dice and learning rate",
        )
        ax.grid(alpha=0.3)
        if lr_metric in keys:
            lr = sorted(histories[lr_metric], key=lambda m: m.step)
            twin = ax.twinx()
            twin.plot([m.step / epoch_length for m in lr], [m.value for m in lr], color="grey", label="lr")
            twin.set(ylabel="learning rate", yscale="log")
        fig.legend(loc="lower right", fontsize=8)
        written.append(_save(fig, out_dir / "validation.png"))
    return written


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Raise logger ``name`` to ERROR for the duration of the block."""
    target = logging.getLogger(name)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def save_pytorch_model(
    scripted: torch.jit.ScriptModule, path: str | Path, pip_requirements: Sequence[str] | None = None
) -> Path:
    """Save a scripted network as an MLflow PyTorch-flavour model folder (``mlflow.pytorch.save_model``).

    ``pip_requirements`` default to the running torch and monai versions (no environment inference, no network
    access). A scripted module needs no clinseg code to load.
    """
    import mlflow.pytorch
    import monai

    requirements = list(
        pip_requirements or [f"torch=={torch.__version__.split('+')[0]}", f"monai=={monai.__version__}"]
    )
    # "pickle" is MLflow's name for torch.jit.save of a ScriptModule (no pickled Python objects); its
    # warning about unpickling does not apply, so it is silenced for this one call
    with _quiet("mlflow.pytorch"):
        mlflow.pytorch.save_model(
            scripted, str(path), pip_requirements=requirements, serialization_format="pickle"
        )
    return Path(path)


def logged_model(client: Any, run_id: str, name: str) -> Any | None:
    """The run's MLflow 3 LoggedModel called ``name`` (``None`` when it has none)."""
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([experiment_id], filter_string=f"name = '{name}'")
    return next((m for m in found if m.source_run_id == run_id), None)


def log_logged_model(client: Any, run_id: str, local_dir: str | Path, name: str) -> str:
    """Log an MLflow model folder as the run's LoggedModel ``name`` (uploaded, READY, linked as the run's output),
    as ``mlflow.pytorch.log_model(name=...)`` does; a model of that name and run is reused, so a replay makes no
    twin. Returns its model id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    run = client.get_run(run_id)
    model = logged_model(client, run_id, name) or client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=run_id, model_type="pytorch"
    )
    client.log_model_artifacts(model.model_id, str(local_dir))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    outputs = run.outputs.model_outputs if run.outputs else []
    if not any(o.model_id == model.model_id for o in outputs):
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return model.model_id


def register_model_version(client: Any, run_id: str, name: str, artifact_path: str) -> None:
    """Register the run's LoggedModel ``artifact_path`` (``models:/<model_id>``; a run artifact folder of that
    name for runs logged without one) as a version of model ``name``, unless it already is (so a replayed
    registration makes no second version)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if getattr(error, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    model = logged_model(client, run_id, artifact_path)
    source = f"models:/{model.model_id}" if model else f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    existing = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    if not any(v.source == source for v in existing):
        client.create_model_version(name, source, run_id=run_id, model_id=model.model_id if model else None)


def log_pytorch_model(
    client: Any,
    run_id: str,
    scripted: torch.jit.ScriptModule,
    artifact_path: str = "pytorch_model",
    *,
    pip_requirements: Sequence[str] | None = None,
    registered_model_name: str | None = None,
) -> str:
    """Log a scripted network as the run's PyTorch-flavour LoggedModel ``artifact_path``; optionally register it.

    Saved with :func:`save_pytorch_model` and uploaded with the given client, so no global MLflow state (active
    run, tracking URI) is touched.

    Returns:
        The model URI ``runs:/<run_id>/<artifact_path>`` (MLflow resolves it to the LoggedModel).
    """
    with tempfile.TemporaryDirectory() as tmp:
        local = save_pytorch_model(scripted, Path(tmp) / artifact_path, pip_requirements)
        log_logged_model(client, run_id, local, artifact_path)
    if registered_model_name:
        register_model_version(client, run_id, registered_model_name, artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


class RunArtifactsHandler:
    """Journals the model, curves and overlays of a training run at ``Events.COMPLETED`` (see module docstring).

    List it in ``train#handlers`` before the trainer's MLflow handler (handlers of one event run in attach
    order, and that handler ends the run at ``COMPLETED``); disable it on ranks > 0.

    Args:
        journal_dir: the run's MLflow journal (the ``journal_dir`` of its ``ResilientMLFlowHandler``).
        best_checkpoint: ``model.pt`` written by ``BestCheckpointSaver``.
        validator: the evaluator whose data and inferer render the overlays (``None``: no overlays).
        class_names: names of labels ``1..N``.
        regions: label values per region, outermost first, for a network with one sigmoid output per region.
        max_overlays: validation cases rendered.
        registered_model_name: register the PyTorch-flavour model under this name (``None``: no registration).
        pip_requirements: requirements of the logged model (default: the running torch and monai).
        curve_kwargs: metric keys passed to :func:`plot_training_curves`.
    """

    def __init__(
        self,
        journal_dir: str | Path,
        best_checkpoint: str | Path,
        *,
        validator: Engine | None = None,
        class_names: Sequence[str] = (),
        regions: Sequence[Sequence[int]] | None = None,
        max_overlays: int = 3,
        registered_model_name: str | None = None,
        pip_requirements: Sequence[str] | None = None,
        curve_kwargs: dict[str, str] | None = None,
    ) -> None:
        if max_overlays < 0:
            raise ValueError(f"max_overlays must be >= 0, got {max_overlays}")
        self.journal_dir = Path(journal_dir)
        self.best_checkpoint = Path(best_checkpoint)
        self.validator = validator
        self.class_names = [str(n) for n in class_names]
        self.regions = None if regions is None else [list(r) for r in regions]
        self.max_overlays = int(max_overlays)
        self.registered_model_name = registered_model_name
        self.pip_requirements = list(pip_requirements) if pip_requirements else None
        self.curve_kwargs = dict(curve_kwargs or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        try:
            self.log_artifacts(engine)
        except Exception as error:  # noqa: BLE001 - checkpoints are on disk already: never fail the training
            logger.warning(
                "run artifacts were not journaled for MLflow (%s: %s)",
                type(error).__name__,
                str(error).splitlines()[0][:300] if str(error) else "",
            )

    def log_artifacts(self, engine: Engine) -> None:
        """Journal every artifact (replayed to MLflow with the run). Raises on any failure (``__call__`` catches)."""
        if not self.best_checkpoint.is_file():
            raise FileNotFoundError(
                f"best checkpoint {self.best_checkpoint} does not exist (no validation ran?)"
            )
        journal = open_journal(self.journal_dir)
        device = getattr(self.validator, "device", None) or torch.device("cpu")
        network = network_from_checkpoint(self.best_checkpoint, map_location="cpu")
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            scripted = export_torchscript(network, root / "model" / "model.ts")
            journal.log_artifact(root / "model" / "model.ts", "model")
            model_dir = save_pytorch_model(scripted, root / "pytorch_model", self.pip_requirements)
            journal.log_model(model_dir, "pytorch_model")
            if self.registered_model_name:
                journal.register_model(self.registered_model_name, "pytorch_model")
            epoch_length = int(engine.state.epoch_length or 1)
            curves = plot_training_curves(
                journal.metric_histories(), root / "curves", epoch_length, **self.curve_kwargs
            )
            for path in curves:
                journal.log_artifact(path, "curves")
            if self.validator is not None and self.max_overlays:
                overlays = render_validation_overlays(
                    network.to(device), self.validator, root / "overlays", self.class_names, self.max_overlays,
                    self.regions,
                )
                for path in overlays:
                    journal.log_artifact(path, "overlays")
        logger.info("journaled TorchScript, PyTorch-flavour model, curves and overlays for MLflow")
