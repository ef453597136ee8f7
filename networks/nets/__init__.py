"""Network implementations; importing this package registers each of them."""

from networks.nets.res_unet import ResUNet

__all__ = ["ResUNet"]
