"""torch.hub entrypoints for AGSSP backbones and detectors: ``torch.hub.load(repo, 'agssp_resnet50')``."""
dependencies = ["torch", "torchvision", "timm", "huggingface_hub", "safetensors"]

from agssp_hub.hub import (  # noqa: E402,F401
    agssp_cspdarknet_s,
    agssp_efficientnet_lite0,
    agssp_faster_rcnn_swin_base_w6,
    agssp_resnet50,
    agssp_swin_base_w6,
    agssp_swin_base_w7,
    agssp_yolov8s,
    agssp_yolov8s_resnet50,
    agssp_yolov8s_swin_base_w6,
    agssp_yolov8s_swin_base_w7,
    agssp_yolov8s_efficientnet_lite0,
)
