"""MLflow 3's web UI against a real ``mlflow server``, rendered in headless Chromium: a clinseg experiment opens
in the model-training view (runs, models) and its run page lists the PyTorch model under "Logged models"."""

from __future__ import annotations

import shutil
import subprocess

import mlflow
import pytest
import torch

from pipeline.tracking.journal import open_journal
from pipeline.tracking.run_artifacts import save_pytorch_model
from pipeline.tracking.run_tags import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, run_page_url
from pipeline.tracking.sync import JournalReplayer
from tests.test_mlflow_server import MlflowServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium")]


def _chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--window-size=1400,800", "--virtual-time-budget=15000", *args, url]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    """A run replayed from its journal to a real server, as training does: params, metrics, the logged model."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ui")
    server = MlflowServer(root)
    server.start()
    try:
        journal = open_journal(root / "journal")
        journal.open_run(server.uri, "clinseg", "ct_organ_resunet3d-ui")
        journal.log_params({"network": "res_unet", "roi_size": "[96, 96, 64]"})
        for epoch in (1, 2):
            journal.log_metrics({"val_mean_dice": 0.4 * epoch, "train_loss": 1.0 / epoch}, epoch)
        journal.log_model(save_pytorch_model(torch.jit.script(torch.nn.Conv3d(1, 2, 1)), root / "pytorch_model"),
                          "pytorch_model")  # fmt: skip
        journal.set_status("FINISHED")
        assert JournalReplayer(journal).flush(wait=True)
        yield server.uri, journal.state["experiment_id"], journal.state["run_id"], root
    finally:
        server.kill()


def test_experiment_is_tagged_and_the_model_is_logged(served_run):
    uri, experiment_id, run_id, _ = served_run
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    (output,) = client.get_run(run_id).outputs.model_outputs
    assert client.get_logged_model(output.model_id).name == "pytorch_model"


@pytest.mark.parametrize(
    ("page", "shown", "hidden"),
    [
        ("experiment", ["ct_organ_resunet3d-ui", "Models"], ["Latency", "Evaluation runs"]),
        ("run", ["Logged models", "pytorch_model"], []),
    ],
)
def test_pages_open_in_the_model_training_view(served_run, page, shown, hidden):
    uri, experiment_id, run_id, root = served_run
    url = run_page_url(uri, experiment_id, run_id if page == "run" else None)
    assert url.endswith("?workflowType=machine_learning")
    dom = _chromium(url, "--dump-dom").stdout
    assert all(text in dom for text in shown), [t for t in shown if t not in dom]
    assert not [text for text in hidden if text in dom]  # the GenAI dashboard's panels
    screenshot = root / f"{page}.png"
    _chromium(url, f"--screenshot={screenshot}")
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
