"""Convert one official AGSSP checkpoint: detect it, map every family, verify shapes, install into the HF cache."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._registry import get_checkpoint
from ._common import (
    BACKBONE_OF,
    ConversionError,
    Coverage,
    MMCheckpoint,
    check_target,
    describe_backbone,
    detect_model,
    load_mm_checkpoint,
)

__all__ = ["ConversionResult", "convert_checkpoint", "convert_file", "timm_backbone"]

_YOLO_BACKBONE_ID = {
    "agssp_yolov8s": "cspdarknet_s",
    "agssp_yolov8s_resnet50": "resnet50",
    "agssp_yolov8s_swin_base_w7": "swin_base_w7",
    "agssp_yolov8s_swin_base_w6": "swin_base_w6",
}
_OUT_NORMS_DROPPED = "mmdet stage-output LayerNorm of the detector neck (no timm equivalent; kept by detectors)"


@dataclass
class ConversionResult:
    """What a conversion produced: state dicts per installed entry, coverage, and where files were installed."""

    source: MMCheckpoint
    name: str  # detected (or requested) registry name
    backbone: str
    coverage: Coverage
    backbone_state_dict: dict[str, Tensor]
    detector_state_dict: dict[str, Tensor] | None = None
    detector_yaml: dict[str, Any] | None = None
    installed: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    yolo: Any = field(default=None, repr=False)  # the ultralytics model the detector state dict was checked on


def timm_backbone(name: str, device: str | torch.device = "meta") -> nn.Module:
    """The timm model of a backbone entry, headless, without weights (on the meta device by default)."""
    import timm

    from .. import models  # noqa: F401  (registers agssp_cspdarknet_s)

    entry = get_checkpoint(name)
    with torch.device(device):
        return timm.create_model(entry.architecture, pretrained=False, num_classes=0, **entry.model_args)


def _convert_backbone(sd: Mapping[str, Tensor], backbone: str, cov: Coverage, origin: str) -> tuple[dict, dict]:
    model = timm_backbone(backbone)
    out_norms: dict[str, Tensor] = {}
    if backbone == "agssp_resnet50":
        from .resnet import convert_resnet50

        produced = convert_resnet50(sd, cov)
    elif backbone == "agssp_cspdarknet_s":
        from .yolov8 import convert_cspdarknet

        produced = convert_cspdarknet(sd, cov)
    else:
        from .swin import convert_swin

        produced, out_norms = convert_swin(sd, model, cov, origin)
    unused = cov.unused("backbone")
    if unused:
        extra = [k for k in unused if not k.startswith("backbone.norm")]
        if extra:
            raise ConversionError(
                f"{origin}: {len(extra)} backbone tensors have no place in {backbone}: {', '.join(extra[:8])}"
            )
    check_target(model.state_dict(), produced, f"{backbone} backbone", origin)
    return produced, out_norms


def convert_checkpoint(ck: MMCheckpoint, name: str | None = None) -> ConversionResult:
    """Convert a loaded checkpoint (detected, or as ``name``); nothing is installed."""
    origin = str(ck.path)
    sd = ck.state_dict
    detected = detect_model(sd, origin) if name is None else None
    if name is not None:
        entry = get_checkpoint(name)
        if entry.family == "backbone":
            found = describe_backbone(sd, origin)
            if found != name:
                raise ConversionError(f"{origin}: holds a {found} backbone, not {name}")
        else:
            detected = detect_model(sd, origin)
            if detected != name:
                raise ConversionError(f"{origin}: is {detected}, not {name}")
        target = name
    else:
        target = detected
    entry = get_checkpoint(target)
    backbone = target if entry.family == "backbone" else BACKBONE_OF[target]
    cov = Coverage.of(sd)
    result = ConversionResult(ck, target, backbone, cov, {})
    if entry.family == "backbone":
        for key in sd:
            if not key.startswith("backbone."):
                cov.drop(key, "not part of the backbone (AGBP head / SimMIM decoder / detector neck and head)")
    result.backbone_state_dict, out_norms = _convert_backbone(sd, backbone, cov, origin)

    if target in _YOLO_BACKBONE_ID:
        from .yolov8 import build_from_yaml, convert_yolo_detector, detector_yaml

        cfg = detector_yaml(_YOLO_BACKBONE_ID[target], nc=1)
        produced = convert_yolo_detector(sd, cfg, result.backbone_state_dict, out_norms, cov)
        yolo = build_from_yaml(cfg, target, names=["anomaly"])
        check_target(yolo.model.state_dict(), produced, f"{target} ultralytics detector", origin)
        result.detector_state_dict, result.detector_yaml, result.yolo = produced, cfg, yolo
    elif target == "agssp_faster_rcnn_swin_base_w6":
        from ..detectors import build_faster_rcnn
        from .faster_rcnn import convert_faster_rcnn

        produced = convert_faster_rcnn(sd, result.backbone_state_dict, cov)
        with torch.device("meta"):
            model = build_faster_rcnn(target)
        check_target(model.state_dict(), produced, f"{target} torchvision detector", origin)
        result.detector_state_dict = produced
    elif target == "agssp_dino_swin_base_w6":
        from .dino import drop_dino_transformer

        drop_dino_transformer(sd, cov)
        result.notes.append("DINO: backbone only (agssp_swin_base_w6); the DINO transformer stays in mmdet")
    for key in sd:
        if key.startswith("backbone.norm") and key not in cov.used and key not in cov.dropped:
            cov.drop(key, _OUT_NORMS_DROPPED)
    for group in cov.groups:
        if group != "backbone" and entry.family == "detector" and target != "agssp_dino_swin_base_w6":
            unused = cov.unused(group)
            if unused:
                raise ConversionError(f"{origin}: {len(unused)} {group} tensors were not mapped: {', '.join(unused[:8])}")
    return result


def _install(result: ConversionResult) -> None:
    from safetensors.torch import save_file

    from .._weights import install_files, install_state_dict

    ck = result.source
    result.installed[result.backbone] = install_state_dict(
        result.backbone, result.backbone_state_dict, source=ck.source(converted_from=result.name)
    )
    if result.detector_state_dict is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, Path] = {"model.safetensors": Path(tmp) / "model.safetensors"}
        save_file({k: v.detach().contiguous() for k, v in result.detector_state_dict.items()}, str(files["model.safetensors"]))
        if result.detector_yaml is not None:
            import yaml

            from ..yolo import save_yolo
            from .yolov8 import build_from_yaml

            cfg = {k: v for k, v in result.detector_yaml.items() if k != "yaml_file"}
            files["model.yaml"] = Path(tmp) / "model.yaml"
            files["model.yaml"].write_text(yaml.safe_dump(cfg, sort_keys=False))
            yolo = result.yolo if result.yolo is not None else build_from_yaml(cfg, result.name, names=["anomaly"])
            yolo.model.load_state_dict(result.detector_state_dict, strict=True)
            files["model.pt"] = save_yolo(
                yolo, Path(tmp) / "model.pt", metadata={"name": result.name, "source_sha256": ck.sha256}
            )
        snapshot = install_files(result.name, files, source=ck.source())
    result.installed[result.name] = snapshot / "model.safetensors"


def convert_file(path: str | os.PathLike[str], name: str | None = None, install: bool = True) -> ConversionResult:
    """Load (safely), detect, convert and, by default, install an official AGSSP checkpoint."""
    result = convert_checkpoint(load_mm_checkpoint(path), name)
    if install:
        _install(result)
    return result
