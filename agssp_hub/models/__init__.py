"""Registered AGSSP backbones (importing this registers them with timm)."""
from .backbones import agssp_efficientnet_lite0, agssp_resnet50, agssp_swin_base_w6, agssp_swin_base_w7
from .cspdarknet import CSPDarknet, agssp_cspdarknet_s

__all__ = [
    "CSPDarknet",
    "agssp_cspdarknet_s",
    "agssp_efficientnet_lite0",
    "agssp_resnet50",
    "agssp_swin_base_w6",
    "agssp_swin_base_w7",
]
