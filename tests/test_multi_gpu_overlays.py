"""The torchrun overlay multi_gpu_train.yaml of every bundle: the device of each process (LOCAL_RANK, not the
global RANK), rank-0-only logging, distributed samplers, and DDP-wrapped networks (fusion loss, pretrained
weights, checkpoints that load into the plain network). The 2-process runs are in test_training_overlays.py."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.handlers import CheckpointSaver

from networks import build_network
from pipeline.core.bundle import Bundle
from pipeline.core.checkpoint import NetworkSpec, network_from_checkpoint
from pipeline.training import distributed
from pipeline.training.fusion import PretrainedWeightsLoader
from pipeline.training.losses import FusionLoss, JointFusionSegLoss, dice_focal_loss
from tests.conftest import BUNDLES, REPO

SHIPPED = sorted(p for p in BUNDLES.iterdir() if (p / "configs").is_dir())
TEMPLATE_OVERLAY = REPO / "pipeline" / "planning" / "template" / "multi_gpu_train.yaml"


def test_every_bundle_links_the_one_overlay_and_the_plan_template_has_an_equal_copy():
    shared = BUNDLES / "multi_gpu_train.yaml"
    assert [b.name for b in SHIPPED] == ["ct_lesion_denseunet2d", "ct_organ_attentionunet3d", "ct_organ_resunet3d",
                                         "ctmr_fusion_seg3d"]  # fmt: skip
    for bundle in SHIPPED:
        assert (bundle / "configs" / "multi_gpu_train.yaml").resolve() == shared.resolve(), bundle.name
    assert TEMPLATE_OVERLAY.read_text() == shared.read_text()


@pytest.mark.parametrize(
    ("cuda", "env", "expected"),
    [
        (True, {"LOCAL_RANK": "1", "RANK": "3"}, "cuda:1"),  # second GPU of the second node: not cuda:3
        (True, {"RANK": "3"}, "cuda:0"),  # LOCAL_RANK unset: the first GPU
        (False, {"LOCAL_RANK": "1", "RANK": "3"}, "cpu"),
    ],
)
def test_local_device_is_the_gpu_of_the_local_rank(monkeypatch, cuda, env, expected):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert distributed.local_device() == torch.device(expected)


def test_ranks_default_to_one_process_and_bad_values_are_named(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (distributed.global_rank(), distributed.world_size()) == (0, 1)
    monkeypatch.setenv("LOCAL_RANK", "one")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match=r"LOCAL_RANK='one' is not an integer"):
        distributed.local_device()


def test_data_parallel_outside_torchrun_says_so(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        RuntimeError, match="needs torchrun .*RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set"
    ):
        distributed.data_parallel(torch.nn.Linear(2, 1), torch.device("cpu"))


@pytest.mark.parametrize("bundle", SHIPPED, ids=lambda b: b.name)
def test_overlay_wires_local_device_global_rank_and_samplers(bundle, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    parser = ConfigParser()
    parser.read_config(Bundle.at(bundle).config_files(["train", "multi_gpu_train"]))
    parser["bundle_root"] = str(bundle)
    assert parser.get_parsed_content("device") == torch.device("cuda:1")
    assert parser.get_parsed_content("is_not_rank0") is True  # global rank 3: no logging, no saving
    for part in ("train", "validate"):
        assert parser[f"{part}#dataloader#sampler"].replace("::", "#") == f"@{part}#sampler"
        assert parser[f"{part}#sampler#_target_"] == "DistributedSampler"
        assert parser.get_parsed_content(f"{part}#sampler#rank") == 3
        assert parser.get_parsed_content(f"{part}#sampler#num_replicas") == 4
    assert parser["train#dataloader#shuffle"] is False  # the sampler shuffles
    assert "data_parallel(@network_def, @device)" in parser["network"]
    # the base workflow's finalize is kept, the process group is left after it
    assert (
        parser["finalize"][-1] == "$pipeline.training.distributed.shutdown()" and len(parser["finalize"]) > 1
    )
    monkeypatch.setenv("RANK", "0")
    parser.parse()
    assert parser.get_parsed_content("is_not_rank0") is False


@pytest.fixture
def one_process_group(monkeypatch):
    """A one-process gloo group joined the way the overlay joins it (torchrun's environment variables)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield
    distributed.shutdown()
    assert not dist.is_initialized()


def _tiny_fusion_net() -> tuple[torch.nn.Module, dict]:
    kwargs = {"spatial_dims": 2, "in_channels": 2, "out_channels": 3, "fusion_features": [4, 8],
              "segmenter_kwargs": {"channels": [4, 8]}}  # fmt: skip
    return build_network("fusion_seg_net", **kwargs), kwargs


def test_fusion_loss_reads_the_module_inside_ddp_and_its_gradients_flow(one_process_group):
    plain, _ = _tiny_fusion_net()
    wrapped_inner, _ = _tiny_fusion_net()
    wrapped_inner.load_state_dict(plain.state_dict())
    ddp = distributed.data_parallel(wrapped_inner, torch.device("cpu"))
    assert dist.get_backend() == "gloo" and distributed.unwrap(ddp) is wrapped_inner
    x, label = torch.rand(2, 2, 32, 32), torch.randint(0, 3, (2, 1, 32, 32))
    losses = []
    for net in (plain, ddp):
        loss = JointFusionSegLoss(dice_focal_loss(), FusionLoss(), fusion_weight=0.5, network=net)
        value = loss(net(x), label)
        value.backward()
        losses.append(value)
    torch.testing.assert_close(losses[1], losses[0])  # with the fusion term, as without DDP
    for p, q in zip(plain.parameters(), wrapped_inner.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad)  # DDP's reducer received the fusion term's gradients
    wrapped_inner.set_stage("fusion_pretrain")  # the stage is read from the wrapped module too
    value = JointFusionSegLoss(dice_focal_loss(), fusion_weight=0.5, network=ddp)(ddp(x), label)
    torch.testing.assert_close(value, FusionLoss()(wrapped_inner.last_fused, x))


def test_ddp_checkpoint_loads_into_the_plain_network_and_back_into_ddp(one_process_group, tmp_path):
    net, kwargs = _tiny_fusion_net()
    ddp = distributed.data_parallel(net, torch.device("cpu"))
    saver = CheckpointSaver(str(tmp_path), {"model": ddp, "network": NetworkSpec("fusion_seg_net", kwargs)},
                            save_final=True, final_filename="model.pt")  # fmt: skip
    engine = Engine(lambda engine, batch: None)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    state = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    assert state and not any(k.startswith("module.") for k in state)
    plain = network_from_checkpoint(tmp_path / "model.pt")  # what clinseg predict does
    for p, q in zip(plain.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    other, _ = _tiny_fusion_net()
    other_ddp = distributed.data_parallel(other, torch.device("cpu"))
    PretrainedWeightsLoader(tmp_path / "model.pt", other_ddp)(Engine(lambda engine, batch: None))
    for p, q in zip(other.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p, q)
