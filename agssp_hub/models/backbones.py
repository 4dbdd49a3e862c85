"""AGSSP backbones on stock timm architectures (ResNet-50, Swin-B w7/w6, EfficientNet-Lite0)."""
from __future__ import annotations

from typing import Any

from timm.models import register_model
from timm.models._registry import generate_default_cfgs
from torch import nn

from .._builder import create_stock_backbone
from .._registry import timm_cfg

__all__: list[str] = []

default_cfgs = generate_default_cfgs(
    {
        f"{name}.agssp_metal": timm_cfg(name)
        for name in ("agssp_resnet50", "agssp_swin_base_w7", "agssp_swin_base_w6", "agssp_efficientnet_lite0")
    }
)


@register_model
def agssp_resnet50(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-50 with AGSSP (AGBP) weights from the official YOLOv8-ResNet50 release."""
    return create_stock_backbone("agssp_resnet50", pretrained, **kwargs)


@register_model
def agssp_swin_base_w7(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-B window 7 with AGSSP (classification-task AGBP) weights."""
    return create_stock_backbone("agssp_swin_base_w7", pretrained, **kwargs)


@register_model
def agssp_swin_base_w6(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Swin-B window 6 (192 px) with AGSSP (SimMIM-task AGBP) weights."""
    return create_stock_backbone("agssp_swin_base_w6", pretrained, **kwargs)


@register_model
def agssp_efficientnet_lite0(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """EfficientNet-Lite0 AGSSP-pretrained by agssp-hub's cpu-mini recipe from ImageNet weights."""
    return create_stock_backbone("agssp_efficientnet_lite0", pretrained, **kwargs)
