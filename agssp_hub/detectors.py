"""AGSSP detectors as ready objects: ultralytics ``YOLO`` (YOLOv8 variants) and torchvision ``FasterRCNN``.

Weights resolve through the HF cache like the backbones (sha256-verified). A YOLO detector is stored as
``model.safetensors`` (ultralytics ``model.N.*`` keys) + ``model.yaml``; ``YOLO(path)`` needs an ultralytics ``.pt``,
which is taken from the snapshot when the converter put one there (listed in its manifest) or materialised once
under ``$AGSSP_HUB_CACHE`` (default ``~/.cache/agssp_hub``). Loading from a ``.pt`` *path* is what makes
``YOLO.train()`` keep the AGSSP weights (ultralytics#8811, #17520). ultralytics is imported only here, lazily.

The Faster R-CNN is torchvision's ``FasterRCNN`` on a timm Swin-B (window 6) with mmdet's stage-output LayerNorms,
a torchvision ``FeaturePyramidNetwork`` (4 levels + max-pool P6) and mmdet's anchors (32-512, ratios 0.5/1/2).
Differences to mmdet: torchvision's RoIAlign uses ``aligned=False`` (mmdet ``aligned=True``, a half-pixel offset)
and torchvision rounds its base anchors to integers; the Swin windows are padded after the shift (mmdet: before)
at sizes not divisible by 6.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ._registry import get_checkpoint
from ._weights import AgsspHubError, MissingWeightsError, resolve_file, sha256_file

__all__ = [
    "YOLO_DETECTORS",
    "FRCNN_DETECTORS",
    "SwinFPN",
    "build_faster_rcnn",
    "load_detector",
    "agssp_yolov8s",
    "agssp_yolov8s_resnet50",
    "agssp_yolov8s_swin_base_w7",
    "agssp_yolov8s_swin_base_w6",
    "agssp_yolov8s_efficientnet_lite0",
    "agssp_faster_rcnn_swin_base_w6",
]

# detector name -> agssp_hub.yolo backbone id
YOLO_DETECTORS = {
    "agssp_yolov8s": "cspdarknet_s",
    "agssp_yolov8s_resnet50": "resnet50",
    "agssp_yolov8s_swin_base_w7": "swin_base_w7",
    "agssp_yolov8s_swin_base_w6": "swin_base_w6",
    "agssp_yolov8s_efficientnet_lite0": "tf_efficientnet_lite0",
}
FRCNN_DETECTORS = {"agssp_faster_rcnn_swin_base_w6": "agssp_swin_base_w6"}
YAML_FILE = "model.yaml"
PT_FILE = "model.pt"


class SwinFPN(nn.Module):
    """timm Swin + mmdet's per-stage output LayerNorms + torchvision FPN; returns torchvision's feature dict."""

    def __init__(self, architecture: str, model_args: dict[str, Any], fpn_channels: int = 256) -> None:
        super().__init__()
        import timm
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        args = {"strict_img_size": False, "always_partition": True, **model_args}
        self.body = timm.create_model(architecture, pretrained=False, num_classes=0, **args)
        channels = [int(f["num_chs"]) for f in self.body.feature_info]
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in channels[:-1])  # mmdet norm0-2; norm3 = body.norm
        self.fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

    def stage_features(self, x: Tensor) -> list[Tensor]:
        """The four normalised Swin stage outputs (strides 4-32), NCHW."""
        feats = self.body.forward_intermediates(
            x, indices=len(self.out_norms) + 1, norm=True, output_fmt="NCHW", intermediates_only=True
        )
        for i, norm in enumerate(self.out_norms):
            feats[i] = norm(feats[i].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return feats

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """FPN levels ``'0'``-``'3'`` and ``'pool'``."""
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.stage_features(x))))


def build_faster_rcnn(name: str = "agssp_faster_rcnn_swin_base_w6", num_classes: int | None = None) -> nn.Module:
    """A randomly initialised torchvision ``FasterRCNN`` with the architecture of ``name`` (classes incl. none)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    entry = get_checkpoint(name)
    backbone = get_checkpoint(FRCNN_DETECTORS[name])
    nc = entry.num_classes if num_classes is None else num_classes
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    return FasterRCNN(
        SwinFPN(backbone.architecture, dict(backbone.model_args)),
        num_classes=nc + 1,  # torchvision counts the background class
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio=0),
        min_size=entry.input_size[1],
        max_size=entry.input_size[2],
        image_mean=list(entry.mean),
        image_std=list(entry.std),
    )


def _cache_root() -> Path:
    return Path(os.environ.get("AGSSP_HUB_CACHE", Path.home() / ".cache" / "agssp_hub"))


def _yolo_pt(name: str, pretrained: bool) -> Path:
    """Path of an ultralytics ``.pt`` holding ``name``'s verified weights (or a random init)."""
    from safetensors.torch import load_file

    from .convert.yolov8 import build_from_yaml, detector_yaml
    from .yolo import save_yolo

    if not pretrained:
        yolo = build_from_yaml(detector_yaml(YOLO_DETECTORS[name]), name)
        return save_yolo(yolo, _cache_root() / "ultralytics" / f"{name}-random.pt")
    weights = resolve_file(name)
    try:
        return resolve_file(name, PT_FILE)  # materialised by `agssp-hub convert`, hash in the manifest
    except MissingWeightsError:
        pass
    import yaml

    cfg = yaml.safe_load(resolve_file(name, YAML_FILE).read_text())
    digest = sha256_file(weights)[:16]
    path = _cache_root() / "ultralytics" / f"{name}-{digest}.pt"
    if path.is_file():
        return path
    yolo = build_from_yaml(cfg, name)
    yolo.model.load_state_dict(load_file(weights), strict=True)
    return save_yolo(yolo, path, metadata={"name": name, "weights_sha256": sha256_file(weights)})


def load_detector(name: str, pretrained: bool = True) -> Any:
    """An AGSSP detector ready to predict and fine-tune: ultralytics ``YOLO`` or torchvision ``FasterRCNN`` (eval)."""
    entry = get_checkpoint(name)
    if entry.family != "detector":
        raise AgsspHubError(f"{name} is a backbone: use timm.create_model({name!r}, pretrained=True)")
    if name in YOLO_DETECTORS:
        from ultralytics import YOLO

        return YOLO(str(_yolo_pt(name, pretrained)), task="detect")
    if name in FRCNN_DETECTORS:
        model = build_faster_rcnn(name)
        if pretrained:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(resolve_file(name)), strict=True)
        return model.eval()
    raise AgsspHubError(
        f"{name}: only the backbone of this detector is served (the DINO transformer needs mmdet); use "
        f"timm.create_model({entry.backbone!r}, pretrained=True)"
    )


def agssp_yolov8s(*, pretrained: bool = True) -> Any:
    """AGSSP YOLOv8-s (CSPDarknet) detector, 1 class, as an ultralytics ``YOLO``."""
    return load_detector("agssp_yolov8s", pretrained)


def agssp_yolov8s_resnet50(*, pretrained: bool = True) -> Any:
    """AGSSP YOLOv8 detector with a ResNet-50 backbone, 1 class, as an ultralytics ``YOLO``."""
    return load_detector("agssp_yolov8s_resnet50", pretrained)


def agssp_yolov8s_swin_base_w7(*, pretrained: bool = True) -> Any:
    """AGSSP YOLOv8 detector with a Swin-B (window 7) backbone, 1 class, as an ultralytics ``YOLO``."""
    return load_detector("agssp_yolov8s_swin_base_w7", pretrained)


def agssp_yolov8s_swin_base_w6(*, pretrained: bool = True) -> Any:
    """AGSSP YOLOv8 detector with a Swin-B (window 6) backbone, 1 class, as an ultralytics ``YOLO``."""
    return load_detector("agssp_yolov8s_swin_base_w6", pretrained)


def agssp_yolov8s_efficientnet_lite0(*, pretrained: bool = True) -> Any:
    """AGDP detector of agssp-hub's cpu-mini recipe (EfficientNet-Lite0 backbone), 1 class, as an ultralytics ``YOLO``."""
    return load_detector("agssp_yolov8s_efficientnet_lite0", pretrained)


def agssp_faster_rcnn_swin_base_w6(*, pretrained: bool = True) -> nn.Module:
    """AGSSP Faster R-CNN (Swin-B window 6 + FPN), 1 class, as a torchvision ``FasterRCNN`` in eval mode."""
    return load_detector("agssp_faster_rcnn_swin_base_w6", pretrained)
