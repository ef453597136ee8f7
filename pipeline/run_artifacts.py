"""End-of-training MLflow artifacts: TorchScript export, training curves, validation overlays, PyTorch-flavour model.

:class:`RunArtifactsHandler` is attached to the trainer (rank 0 only) *before* the trainer's MLflow handler, so
at ``Events.COMPLETED`` it logs into the run while that run is still open (the MLflow handler closes it at
``COMPLETED`` with ``close_on_complete``). The run is found the way MONAI's ``MLFlowHandler`` finds it: tracking
URI + run name. Everything is built from the best checkpoint on disk (``model.pt``), never from the live network
(which may be wrapped by DDP). A failure is logged once as a warning and never fails the training.

Artifacts of a run::

    model/model.ts            TorchScript of the best checkpoint (torch.jit.load, no clinseg needed)
    pytorch_model/            the same scripted network in MLflow's PyTorch flavour (mlflow.pytorch.load_model)
    curves/loss.png           training loss per epoch
    curves/validation.png     per-class validation Dice and the learning rate vs epoch
    overlays/<case>.png       predicted masks of the first validation cases (case ids, never patient names)
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from pipeline.checkpoint import network_from_checkpoint
from pipeline.preview import render_preview

__all__ = [
    "RunArtifactsHandler",
    "epoch_loss_points",
    "export_torchscript",
    "find_run_id",
    "log_pytorch_model",
    "plot_training_curves",
    "render_validation_overlays",
]

logger = logging.getLogger(__name__)

Points = list[tuple[float, float]]


def find_run_id(client: Any, run_name: str, experiment_name: str | None = None) -> str:
    """The id of the newest run called ``run_name`` (in ``experiment_name`` when given, else in any experiment)."""
    if experiment_name is not None:
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            raise LookupError(
                f"MLflow experiment {experiment_name!r} does not exist in {client.tracking_uri}"
            )
        experiment_ids = [experiment.experiment_id]
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"attributes.run_name = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise LookupError(f"no MLflow run named {run_name!r} in {client.tracking_uri}")
    return runs[0].info.run_id


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
    client: Any,
    run_id: str,
    out_dir: str | Path,
    epoch_length: int,
    *,
    loss_metric: str = "train_loss",
    iteration_loss_metric: str = "train_loss",
    lr_metric: str = "lr_group_0",
    dice_prefix: str = "val_dice_",
    mean_dice_metric: str = "val_mean_dice",
) -> list[Path]:
    """Training-curve PNGs read back from the run's metric history (resumed runs show every epoch).

    Args:
        client: an ``mlflow.MlflowClient`` of the run's store.
        run_id: the run.
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
    keys = set(client.get_run(run_id).data.metrics)
    written = []
    if loss_metric in keys:
        points = epoch_loss_points(
            client.get_metric_history(run_id, loss_metric),
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
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
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
            lr = sorted(client.get_metric_history(run_id, lr_metric), key=lambda m: m.step)
            twin = ax.twinx()
            twin.plot([m.step / epoch_length for m in lr], [m.value for m in lr], color="grey", label="lr")
            twin.set(ylabel="learning rate", yscale="log")
        fig.legend(loc="lower right", fontsize=8)
        written.append(_save(fig, out_dir / "validation.png"))
    return written


def _case_names(batch: dict[str, Any], count: int, start: int) -> list[str]:
    names = batch.get("case")
    if isinstance(names, (list, tuple)) and len(names) == count:
        return [Path(str(n)).name for n in names]  # a bare id, never a path
    return [f"validation_{start + i:03d}" for i in range(count)]


@torch.no_grad()
def render_validation_overlays(
    network: nn.Module,
    validator: Engine,
    out_dir: str | Path,
    class_names: Sequence[str],
    max_cases: int = 3,
) -> list[Path]:
    """Overlay PNGs of ``network``'s argmax prediction on the first validation cases.

    Uses the validator's (cached, preprocessed) data loader and its inferer, e.g. a sliding window; the
    image shown is the preprocessed one (windowed CT, ``(1, X, Y[, Z])``) on its own grid.

    Args:
        network: the best network, on the validator's device, eval mode.
        validator: MONAI ``SupervisedEvaluator`` (needs ``data_loader``, ``inferer``, ``device``).
        out_dir: folder for ``<case>.png`` (the datalist's ``case`` id).
        class_names: names of labels ``1..N`` for the legend.
        max_cases: how many cases to render.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = {i + 1: str(name) for i, name in enumerate(class_names)}
    device = getattr(validator, "device", torch.device("cpu"))
    written: list[Path] = []
    for batch in validator.data_loader:
        images = batch["image"].to(device)
        pred = validator.inferer(images, network).argmax(dim=1, keepdim=True)
        for name, image, mask in zip(_case_names(batch, len(images), len(written)), images, pred):
            written.append(
                render_preview(image.cpu(), mask.cpu(), None, labels, out_dir / f"{name}.png", title=name)
            )
            if len(written) >= max_cases:
                return written
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


def log_pytorch_model(
    client: Any,
    run_id: str,
    scripted: torch.jit.ScriptModule,
    artifact_path: str = "pytorch_model",
    *,
    pip_requirements: Sequence[str] | None = None,
    registered_model_name: str | None = None,
) -> str:
    """Log a scripted network as an MLflow PyTorch-flavour model under the run's artifacts; optionally register it.

    Saved with ``mlflow.pytorch.save_model`` and uploaded with the given client, so no global MLflow state (active
    run, tracking URI) is touched. ``pip_requirements`` default to the running torch and monai versions (no
    environment inference, no network access). A scripted module needs no clinseg code to load.

    Returns:
        The model URI ``runs:/<run_id>/<artifact_path>``.
    """
    import mlflow.pytorch
    import monai

    requirements = list(
        pip_requirements or [f"torch=={torch.__version__.split('+')[0]}", f"monai=={monai.__version__}"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / artifact_path
        # "pickle" is MLflow's name for torch.jit.save of a ScriptModule (no pickled Python objects); its
        # warning about unpickling does not apply, so it is silenced for this one call
        with _quiet("mlflow.pytorch"):
            mlflow.pytorch.save_model(
                scripted, str(local), pip_requirements=requirements, serialization_format="pickle"
            )
        client.log_artifacts(run_id, str(local), artifact_path)
    uri = f"runs:/{run_id}/{artifact_path}"
    if registered_model_name:
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(registered_model_name)
        except MlflowException as error:
            if getattr(error, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        client.create_model_version(registered_model_name, source, run_id=run_id)
    return uri


class RunArtifactsHandler:
    """Logs the model, curves and overlays of a training run at ``Events.COMPLETED`` (see module docstring).

    List it in ``train#handlers`` before the trainer's MLflow handler (handlers of one event run in attach
    order, and that handler closes the run at ``COMPLETED``); disable it on ranks > 0.

    Args:
        tracking_uri: the run's MLflow store (as given to the MLflow handler).
        run_name: the run's name; experiment_name: its experiment.
        best_checkpoint: ``model.pt`` written by ``BestCheckpointSaver``.
        validator: the evaluator whose data and inferer render the overlays (``None``: no overlays).
        class_names: names of labels ``1..N``.
        max_overlays: validation cases rendered.
        registered_model_name: register the PyTorch-flavour model under this name (``None``: no registration).
        pip_requirements: requirements of the logged model (default: the running torch and monai).
        curve_kwargs: metric keys passed to :func:`plot_training_curves`.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_name: str,
        best_checkpoint: str | Path,
        *,
        experiment_name: str | None = None,
        validator: Engine | None = None,
        class_names: Sequence[str] = (),
        max_overlays: int = 3,
        registered_model_name: str | None = None,
        pip_requirements: Sequence[str] | None = None,
        curve_kwargs: dict[str, str] | None = None,
    ) -> None:
        if max_overlays < 0:
            raise ValueError(f"max_overlays must be >= 0, got {max_overlays}")
        self.tracking_uri = str(tracking_uri)
        self.run_name = str(run_name)
        self.experiment_name = experiment_name
        self.best_checkpoint = Path(best_checkpoint)
        self.validator = validator
        self.class_names = [str(n) for n in class_names]
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
                "run artifacts were not logged to MLflow run %s (%s: %s)",
                self.run_name,
                type(error).__name__,
                str(error).splitlines()[0][:300] if str(error) else "",
            )

    def log_artifacts(self, engine: Engine) -> str:
        """Log every artifact into the run; returns its id. Raises on any failure (``__call__`` catches)."""
        import mlflow

        if not self.best_checkpoint.is_file():
            raise FileNotFoundError(
                f"best checkpoint {self.best_checkpoint} does not exist (no validation ran?)"
            )
        # as MONAI's MLFlowHandler: MLFLOW_TRACKING_URI, when set, wins over the argument
        client = mlflow.MlflowClient(
            tracking_uri=None if os.environ.get("MLFLOW_TRACKING_URI") else self.tracking_uri
        )
        run_id = find_run_id(client, self.run_name, self.experiment_name)
        device = getattr(self.validator, "device", None) or torch.device("cpu")
        network = network_from_checkpoint(self.best_checkpoint, map_location="cpu")
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            scripted = export_torchscript(network, root / "model" / "model.ts")
            client.log_artifact(run_id, str(root / "model" / "model.ts"), "model")
            log_pytorch_model(
                client,
                run_id,
                scripted,
                pip_requirements=self.pip_requirements,
                registered_model_name=self.registered_model_name,
            )
            epoch_length = int(engine.state.epoch_length or 1)
            for path in plot_training_curves(
                client, run_id, root / "curves", epoch_length, **self.curve_kwargs
            ):
                client.log_artifact(run_id, str(path), "curves")
            if self.validator is not None and self.max_overlays:
                overlays = render_validation_overlays(
                    network.to(device), self.validator, root / "overlays", self.class_names, self.max_overlays
                )
                for path in overlays:
                    client.log_artifact(run_id, str(path), "overlays")
        logger.info(
            "logged TorchScript, PyTorch-flavour model, curves and overlays to MLflow run %s", self.run_name
        )
        return run_id
