"""Every registered network: shapes at odd sizes, gradients, TorchScript/ONNX export, argument checks."""

from __future__ import annotations

import io

import pytest
import torch

from networks import build_network, list_networks

SHAPES = {2: (97, 61), 3: (33, 34, 35)}
IN, OUT = 2, 3

# Smallest configuration of each network (CPU-test sized); a registered network missing here fails the suite.
TINY: dict[str, dict] = {
    "attention_unet": {"channels": (4, 8, 16)},
    "dense_unet": {"init_features": 8, "growth_rate": 4, "layers_per_block": 2, "levels": 2},
    "dual_encoder_fusion": {"features": (4, 8, 16)},
    "feature_fusion_unet": {"features": (4, 8, 16)},
    "fusion_seg_net": {"fusion_features": (4, 8), "segmenter_kwargs": {"channels": (4, 8, 16)}},
    "res_unet": {"channels": (4, 8, 16)},
    "unet": {"features": (4, 8, 16)},
}


def tiny(name: str, spatial_dims: int, **extra) -> torch.nn.Module:
    return build_network(
        name, spatial_dims=spatial_dims, in_channels=IN, out_channels=OUT, **TINY[name], **extra
    )


CASES = [(name, sd) for name in list_networks() for sd in (2, 3)]


def test_every_network_has_a_tiny_config():
    assert sorted(TINY) == list_networks()


@pytest.mark.parametrize("name, spatial_dims", CASES)
def test_output_shape_at_odd_sizes(name, spatial_dims):
    net = tiny(name, spatial_dims).eval()
    x = torch.randn(1, IN, *SHAPES[spatial_dims])
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, OUT, *SHAPES[spatial_dims])
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name, spatial_dims", CASES)
def test_gradients_reach_every_parameter(name, spatial_dims):
    net = tiny(name, spatial_dims).train()
    y = net(torch.randn(1, IN, *SHAPES[spatial_dims]))
    (y.float() ** 2).mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"


@pytest.mark.parametrize("name, spatial_dims", CASES)
def test_torchscript_round_trip(name, spatial_dims):
    net = tiny(name, spatial_dims).eval()
    x = torch.randn(1, IN, *SHAPES[spatial_dims])
    scripted = torch.jit.script(net)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


@pytest.mark.parametrize("name, spatial_dims", CASES)
def test_onnx_export_round_trip(name, spatial_dims):
    onnx = pytest.importorskip("onnx")
    net = tiny(name, spatial_dims).eval()
    x = torch.randn(1, IN, *SHAPES[spatial_dims])
    buffer = io.BytesIO()
    torch.onnx.export(
        net, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"]
    )
    model = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(model)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (y_onnx,) = session.run(["y"], {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y_onnx), net(x), atol=1e-4, rtol=1e-4)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(
        ValueError, match="unknown network 'res_unt'.*Did you mean 'res_unet'.*Valid names: .*res_unet"
    ):
        build_network("res_unt")


@pytest.mark.parametrize("name", list_networks())
@pytest.mark.parametrize(
    "bad, match",
    [
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3, got 4"),
        ({"in_channels": 0}, "in_channels.* positive integer.*0"),
        ({"out_channels": 1.5}, "out_channels.* positive integer.*1.5"),
        ({"dropout": 1.0}, "dropout must be a number in \\[0, 1\\), got 1.0"),
    ],
)
def test_bad_common_arguments_raise_clearly(name, bad, match):
    kwargs = {"spatial_dims": 2, "in_channels": IN, "out_channels": OUT, **TINY[name], **bad}
    with pytest.raises(ValueError, match=match):
        build_network(name, **kwargs)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"channels": (8,)}, "channels must be a sequence of at least 2 positive integers, got \\(8,\\)"),
        ({"channels": (8, 0)}, "every entry of channels must be a positive integer"),
        ({"attention_kernel_size": 4}, "attention_kernel_size must be an odd positive integer, got 4"),
        ({"channels": (4, 8), "deep_supervision": True}, "deep_supervision needs at least 3 levels"),
    ],
)
def test_res_unet_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=f"ResUNet: {match}"):
        build_network("res_unet", **{"spatial_dims": 2, **TINY["res_unet"], **bad})


@pytest.mark.parametrize(
    "name, bad, match",
    [
        (
            "unet",
            {"upsample": "bilinaer"},
            r"UNet: upsample must be one of \('transpose', 'bilinear'\), got 'bilinaer'\. Did you mean",
        ),
        ("unet", {"features": 16}, "UNet: features must be a sequence"),
        ("attention_unet", {"channels": (4,)}, "AttentionUNet: channels must be a sequence of at least 2"),
        ("dense_unet", {"growth_rate": 0}, "DenseUNet: growth_rate must be a positive integer, got 0"),
        ("dense_unet", {"levels": 2.0}, "DenseUNet: levels must be a positive integer, got 2.0"),
        (
            "dense_unet",
            {"stem_kernel_size": 6},
            "DenseUNet: stem_kernel_size must be an odd positive integer, got 6",
        ),
        ("dual_encoder_fusion", {"in_channels": 1}, "number of modalities and must be >= 2, got 1"),
        (
            "dual_encoder_fusion",
            {"fusion": "sum"},
            r"DualEncoderFusion: fusion must be one of \('concat', 'attention'\), got 'sum'",
        ),
        ("fusion_seg_net", {"segmenter": "fusion_seg_net"}, "segmenter must be a segmentation network"),
        ("fusion_seg_net", {"segmenter": "resunet"}, "unknown network 'resunet'.*Did you mean 'res_unet'"),
        ("fusion_seg_net", {"segmenter_kwargs": {"in_channels": 3}}, "must not set \\['in_channels'\\]"),
    ],
)
def test_specific_bad_arguments(name, bad, match):
    with pytest.raises(ValueError, match=match):
        build_network(name, **{"spatial_dims": 2, **TINY[name], **bad})


@pytest.mark.parametrize("upsample", ["transpose", "bilinear"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unet_upsampling_modes_at_odd_sizes(upsample, spatial_dims):
    net = build_network(
        "unet",
        spatial_dims=spatial_dims,
        in_channels=IN,
        out_channels=OUT,
        features=(4, 8, 16, 32),
        upsample=upsample,
    )
    assert net(torch.randn(1, IN, *SHAPES[spatial_dims])).shape == (1, OUT, *SHAPES[spatial_dims])


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("unet", {"upsample": "bilinear"}, 17_266_241),  # the article's layout (it quotes "16.2M")
        ("unet", {"upsample": "transpose"}, 31_042_369),
    ],
)
def test_article_parameter_counts(name, kwargs, expected):
    net = build_network(name, spatial_dims=2, in_channels=1, out_channels=1, **kwargs)
    assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_res_unet_deep_supervision_shapes(spatial_dims):
    shape = SHAPES[spatial_dims]
    net = build_network(
        "res_unet",
        spatial_dims=spatial_dims,
        in_channels=IN,
        out_channels=OUT,
        channels=(2, 4, 8, 8),
        deep_supervision=True,
    )
    x = torch.randn(1, IN, *shape)
    assert net.train()(x).shape == (1, 3, OUT, *shape)  # full resolution + two coarser heads
    with torch.no_grad():
        full = net.eval()(x)
    assert full.shape == (1, OUT, *shape)
    scripted = torch.jit.script(net.train())
    assert scripted(x).shape == (1, 3, OUT, *shape)


def test_res_unet_default_is_the_article_configuration():
    net = build_network("res_unet", spatial_dims=2, in_channels=1, out_channels=1)
    widths = [
        m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    assert max(widths) == 1024 and min(widths) == 64


@pytest.mark.parametrize("fusion", ["concat", "attention"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_fused_image_is_in_unit_range(fusion, spatial_dims):
    net = tiny("dual_encoder_fusion", spatial_dims, fusion=fusion)
    fused = net(torch.randn(1, IN, *SHAPES[spatial_dims]) * 5)
    assert fused.min() >= 0 and fused.max() <= 1


@pytest.mark.parametrize(
    "segmenter, kwargs", [("attention_unet", {"channels": (4, 8)}), ("unet", {"features": (4, 8)})]
)
def test_fusion_seg_net_contract(segmenter, kwargs):
    net = build_network(
        "fusion_seg_net",
        spatial_dims=2,
        in_channels=3,
        out_channels=OUT,
        fusion="attention",
        fusion_features=(4, 8),
        segmenter=segmenter,
        segmenter_kwargs=kwargs,
    )
    assert net.last_fused.numel() == 0
    x = torch.rand(2, 3, 33, 34)
    for mode in (net.train, net.eval):
        mode()
        logits = net(x)
        assert logits.shape == (2, OUT, 33, 34)
        assert net.last_fused.shape == (2, 1, 33, 34) and net.last_input is x
    net.eval()
    with torch.no_grad():
        logits, fused = net.forward_with_fused(x)
        torch.testing.assert_close(logits, net(x))
        torch.testing.assert_close(fused, net.last_fused)


def trainable(module: torch.nn.Module) -> set[bool]:
    return {p.requires_grad for p in module.parameters()}


def test_fusion_seg_net_stages_freeze_the_right_parameters():
    net = tiny("fusion_seg_net", 2)
    net.set_stage("fusion_pretrain")
    assert net.stage == "fusion_pretrain"
    assert trainable(net.fusion_net) == {True} and trainable(net.segmenter) == {False}
    net.set_stage("joint")
    assert trainable(net) == {True}
    net.freeze_fusion(True)
    assert trainable(net.fusion_net) == {False} and trainable(net.segmenter) == {True}
    net.freeze_fusion(False)
    assert trainable(net) == {True}
    with pytest.raises(ValueError, match="FusionSegNet: stage must be one of .*got 'pretrain'"):
        net.set_stage("pretrain")


def test_fusion_pretrain_stage_does_not_run_the_frozen_segmenter():
    net = tiny("fusion_seg_net", 2).set_stage("fusion_pretrain")
    calls = []
    net.segmenter.register_forward_hook(lambda *_: calls.append(1))
    out = net(torch.rand(2, IN, 33, 34))
    assert calls == [] and out.shape == (2, 1, 33, 34) and out is net.last_fused
    net.set_stage("joint")
    assert net(torch.rand(2, IN, 33, 34)).shape == (2, OUT, 33, 34) and calls == [1]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_feature_fusion_unet_fuses_every_level_and_offers_a_fused_image(spatial_dims):
    shape = SHAPES[spatial_dims]
    x = torch.rand(2, IN, *shape)
    plain = tiny("feature_fusion_unet", spatial_dims)
    assert plain(x).shape == (2, OUT, *shape) and plain.last_fused.numel() == 0
    with pytest.raises(ValueError, match="built without fused_image_head"):
        plain.forward_with_fused(x)
    net = tiny("feature_fusion_unet", spatial_dims, fused_image_head=True)
    logits = net(x)
    assert logits.shape == (2, OUT, *shape) and net.last_input is x
    assert net.last_fused.shape == (2, 1, *shape) and 0 <= net.last_fused.min() <= net.last_fused.max() <= 1
    assert len(net.fusers) == 3 and len(net.encoders) == IN  # one encoder per modality, a fusion per level
    net.set_stage("fusion_pretrain")
    assert trainable(net.head) == {False} and trainable(net.encoders) == trainable(net.fused_head) == {True}
    net.set_stage("joint")
    assert trainable(net) == {True}
    with pytest.raises(ValueError, match="fusion pretraining needs fused_image_head=True"):
        plain.set_stage("fusion_pretrain")
