"""torch.hub entrypoints: every backbone as a timm model, every detector as an ultralytics/torchvision model."""
from __future__ import annotations

from typing import Any

import timm
from torch import nn

from .detectors import (
    agssp_faster_rcnn_swin_base_w6,
    agssp_yolov8s,
    agssp_yolov8s_resnet50,
    agssp_yolov8s_swin_base_w6,
    agssp_yolov8s_swin_base_w7,
    agssp_yolov8s_efficientnet_lite0,
)

__all__ = [
    "agssp_resnet50",
    "agssp_swin_base_w7",
    "agssp_swin_base_w6",
    "agssp_cspdarknet_s",
    "agssp_efficientnet_lite0",
    "agssp_yolov8s",
    "agssp_yolov8s_resnet50",
    "agssp_yolov8s_swin_base_w7",
    "agssp_yolov8s_swin_base_w6",
    "agssp_yolov8s_efficientnet_lite0",
    "agssp_faster_rcnn_swin_base_w6",
]


def agssp_resnet50(*, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """ResNet-50 backbone with AGSSP weights (kwargs go to timm.create_model)."""
    return timm.create_model("agssp_resnet50", pretrained=pretrained, **kwargs)


def agssp_swin_base_w7(*, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """Swin-B window-7 backbone with AGSSP (cls-task AGBP) weights."""
    return timm.create_model("agssp_swin_base_w7", pretrained=pretrained, **kwargs)


def agssp_swin_base_w6(*, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """Swin-B window-6 backbone with AGSSP (SimMIM-task AGBP) weights."""
    return timm.create_model("agssp_swin_base_w6", pretrained=pretrained, **kwargs)


def agssp_cspdarknet_s(*, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """YOLOv8-s CSPDarknet backbone with AGSSP weights."""
    return timm.create_model("agssp_cspdarknet_s", pretrained=pretrained, **kwargs)


def agssp_efficientnet_lite0(*, pretrained: bool = True, **kwargs: Any) -> nn.Module:
    """EfficientNet-Lite0 backbone AGSSP-pretrained by agssp-hub's cpu-mini recipe."""
    return timm.create_model("agssp_efficientnet_lite0", pretrained=pretrained, **kwargs)
