"""Network implementations; importing this package registers each of them."""

from networks.nets.attention_unet import AttentionUNet
from networks.nets.dense_unet import DenseUNet
from networks.nets.fusion import DualEncoderFusion, FeatureFusionUNet, FusionSegNet
from networks.nets.res_unet import ResUNet
from networks.nets.unet import UNet

__all__ = ["AttentionUNet", "DenseUNet", "DualEncoderFusion", "FeatureFusionUNet", "FusionSegNet", "ResUNet", "UNet"]
