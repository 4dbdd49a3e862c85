"""torch.hub entrypoints for AGSSP backbones and detectors: ``torch.hub.load(repo, 'agssp_resnet50')``."""
from __future__ import annotations

from typing import Any

dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]


def _backbone(name: str, pretrained: bool, **kwargs: Any) -> Any:
    import timm

    import agssp_hub  # noqa: F401  (registers the backbones)

    return timm.create_model(name, pretrained=pretrained, **kwargs)


def _detector(name: str, **kwargs: Any) -> Any:
    import agssp_hub

    return agssp_hub.load_detector(name, **kwargs)


def agssp_resnet50(*, pretrained: bool = True, **kwargs: Any) -> Any:
    """ResNet-50 backbone with AGSSP weights (timm model; kwargs go to timm.create_model)."""
    return _backbone("agssp_resnet50", pretrained, **kwargs)


def agssp_swin_base_w7(*, pretrained: bool = True, **kwargs: Any) -> Any:
    """Swin-B window-7 backbone with AGSSP (cls-task AGBP) weights."""
    return _backbone("agssp_swin_base_w7", pretrained, **kwargs)


def agssp_swin_base_w6(*, pretrained: bool = True, **kwargs: Any) -> Any:
    """Swin-B window-6 backbone with AGSSP (SimMIM-task AGBP) weights."""
    return _backbone("agssp_swin_base_w6", pretrained, **kwargs)


def agssp_cspdarknet_s(*, pretrained: bool = True, **kwargs: Any) -> Any:
    """YOLOv8-s CSPDarknet backbone with AGSSP weights."""
    return _backbone("agssp_cspdarknet_s", pretrained, **kwargs)


def agssp_efficientnet_lite0(*, pretrained: bool = True, **kwargs: Any) -> Any:
    """EfficientNet-Lite0 backbone AGSSP-pretrained by agssp-hub's cpu-mini recipe."""
    return _backbone("agssp_efficientnet_lite0", pretrained, **kwargs)


def agssp_yolov8s(**kwargs: Any) -> Any:
    """Official AGSSP YOLOv8-s detector (1 class) as an ultralytics YOLO, ready to predict or fine-tune."""
    return _detector("agssp_yolov8s", **kwargs)


def agssp_yolov8s_resnet50(**kwargs: Any) -> Any:
    """Official AGSSP YOLOv8 detector with a ResNet-50 backbone as an ultralytics YOLO."""
    return _detector("agssp_yolov8s_resnet50", **kwargs)


def agssp_yolov8s_swin_base_w7(**kwargs: Any) -> Any:
    """Official AGSSP YOLOv8 detector with a Swin-B w7 backbone as an ultralytics YOLO."""
    return _detector("agssp_yolov8s_swin_base_w7", **kwargs)


def agssp_yolov8s_swin_base_w6(**kwargs: Any) -> Any:
    """Official AGSSP YOLOv8 detector with a Swin-B w6 backbone as an ultralytics YOLO."""
    return _detector("agssp_yolov8s_swin_base_w6", **kwargs)


def agssp_faster_rcnn_swin_base_w6(**kwargs: Any) -> Any:
    """Official AGSSP Faster R-CNN (Swin-B w6 + FPN) as a torchvision FasterRCNN."""
    return _detector("agssp_faster_rcnn_swin_base_w6", **kwargs)
