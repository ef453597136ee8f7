"""Bundle overlays: torchrun data-parallel training, cosine warmup, stage-2 fine-tuning; trainer knobs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from pipeline.core.checkpoint import load_checkpoint, network_from_checkpoint
from pipeline.synthetic.phantoms import synthesize
from pipeline.training.train import train_bundle
from tests.conftest import BUNDLES, REPO, TINY_SHAPE

BUNDLE = BUNDLES / "ct_organ_resunet3d"
CONFIGS = BUNDLE / "configs"
SMALL = {"val_interval": 1, "batch_size": 1, "samples_per_volume": 1, "roi_size": [32, 32, 16]}


@pytest.fixture(scope="module")
def dataset8(tmp_path_factory) -> Path:
    """Eight tiny cases: 4 training / 2 validation, so two ranks each get validation data."""
    out = tmp_path_factory.mktemp("d8")
    return synthesize(out, cases=8, seed=5, shape=TINY_SHAPE, splits=(0.5, 0.25, 0.25)).parent


TEARDOWN_ABORT = "terminate called without an active exception"
"""What a rank prints when gloo's threads are torn down in a race at process exit (seen once in 16 runs here,
after training, checkpoints and MLflow logging had all finished): an upstream flake, retried once below."""


def _torchrun(bundle: Path, dataset: Path, folder: Path) -> subprocess.CompletedProcess:
    """2 processes (gloo on CPU), 2 epochs: the ResUNet through ``monai.bundle run`` as the overlay's header
    writes it, the fusion bundle (a DDP-wrapped network read by its loss) through ``clinseg train``."""
    folder.mkdir()
    configs = bundle / "configs"
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2"]
    if bundle.name == "ct_organ_resunet3d":
        command = [
            *torchrun, "-m", "monai.bundle", "run",
            "--config_file", str([str(bundle.parent / "_base" / "base_common.yaml"), str(configs / "common.yaml"),
                                  str(bundle.parent / "_base" / "base_train.yaml"), str(configs / "train.yaml"),
                                  str(configs / "multi_gpu_train.yaml")]),  # as the README's torchrun command
            "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf"),
            "--bundle_root", str(bundle), "--dataset_dir", str(dataset), "--ckpt_dir", str(folder / "ckpt"),
            "--tracking_uri", f"sqlite:///{folder / 'mlflow.db'}", "--max_epochs", "2",
            *[a for k, v in SMALL.items() for a in (f"--{k}", str(v))],
        ]  # fmt: skip
    else:
        sets = [a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")]
        command = [
            *torchrun, "-m", "pipeline.cli", "train", str(bundle), "--config", "multi_gpu_train",
            "--dataset-dir", str(dataset), "--ckpt-dir", str(folder / "ckpt"),
            "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}", "--epochs", "2", *sets,
        ]  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(folder), "PYTHONPATH": str(REPO)}
    return subprocess.run(command, check=False, capture_output=True, text=True, cwd=folder, env=env, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["ct_organ_resunet3d", "ctmr_fusion_seg3d"])
def test_torchrun_two_processes_give_one_mlflow_run_and_one_checkpoint_set(bundle, dataset8, tmp_path):
    bundle = BUNDLES / bundle
    folder = tmp_path / "try1"
    done = _torchrun(bundle, dataset8, folder)
    if done.returncode != 0 and TEARDOWN_ABORT in done.stderr and (folder / "ckpt" / "model_final.pt").is_file():
        folder = tmp_path / "try2"  # the known exit-time abort after a finished run: once more, from scratch
        done = _torchrun(bundle, dataset8, folder)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    db, ckpt = folder / "mlflow.db", folder / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "config_run.json", "mlflow_journal", "model.pt",
        "model_final.pt", "run_name.txt",
    ]  # fmt: skip
    final = load_checkpoint(ckpt / "model_final.pt")
    assert not any(k.startswith("module.") for k in final["model"]), "DDP wrapper must not leak into weights"
    assert final["trainer"]["iteration"] == 4  # 4 training cases over 2 ranks, batch 1 -> 2 per epoch
    network_from_checkpoint(ckpt / "model.pt")  # what clinseg predict loads: the plain network
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("clinseg").experiment_id])
    assert len(runs) == 1 and "val_mean_dice" in runs[0].data.metrics


@pytest.mark.slow
def test_cosine_warmup_and_stage2_finetune_overlays(dataset8, tmp_path):
    stage1 = train_bundle(BUNDLE, dataset_dir=dataset8, ckpt_dir=tmp_path / "s1", tracking_uri=f"sqlite:///{tmp_path}/m.db",
                          max_epochs=1, overrides={**SMALL, "spacing": [3.2, 3.2, 5.0]})  # fmt: skip
    stage2 = train_bundle(
        BUNDLE, dataset_dir=dataset8, ckpt_dir=tmp_path / "s2", tracking_uri=f"sqlite:///{tmp_path}/m.db",
        max_epochs=2, config=["train", "cosine_warmup", "stage2_finetune"],
        overrides={**SMALL, "stage1_checkpoint": str(stage1.best_checkpoint), "warmup_epochs": 1},
    )
    assert stage2.epochs == 2 and stage2.best_checkpoint.is_file()
    # WarmupCosineSchedule (linear warmup then cosine), stepped per epoch: the lr after 2 epochs is below the peak
    final = load_checkpoint(tmp_path / "s2" / "model_final.pt")
    assert final["lr_scheduler"]["last_epoch"] == 2
    assert final["optimizer"]["param_groups"][0]["lr"] < 0.001


def test_gradient_clip_and_early_stop_arguments_are_checked():
    from pipeline.training.handlers import GradientClipHandler, ValidationEarlyStopping

    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        GradientClipHandler(-1.0)
    with pytest.raises(ValueError, match="patience must be >= 0"):
        ValidationEarlyStopping(validator=None, patience=-2)


def test_gradient_clip_handler_clips_on_step_iterations_only():
    from types import SimpleNamespace

    from pipeline.training.handlers import GradientClipHandler

    net = torch.nn.Linear(4, 1)
    engine = SimpleNamespace(network=net, accumulation_steps=2, amp=False,
                             state=SimpleNamespace(iteration=1, epoch_length=4))  # fmt: skip
    net.weight.grad = torch.full_like(net.weight, 10.0)
    net.bias.grad = torch.full_like(net.bias, 10.0)
    GradientClipHandler(1.0)(engine)  # iteration 1 of 2 accumulated: no step, no clip
    assert float(net.weight.grad.abs().max()) == 10.0
    engine.state.iteration = 2
    GradientClipHandler(1.0)(engine)
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in net.parameters()))
    assert float(total) == pytest.approx(1.0, rel=1e-4)
