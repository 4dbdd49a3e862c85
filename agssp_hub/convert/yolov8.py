"""mmyolo YOLOv8 detectors -> ultralytics (method-spec §6.3), for all three AGSSP backbones.

* CSPDarknet: ``backbone.stem`` / ``stageS.I`` -> our timm ``CSPDarknet`` (same names) -> ultralytics ``model.0-9``.
* ResNet-50 / Swin-B: the timm backbone sits in ``model.0.m.body`` (``agssp_hub.yolo.TimmFeatures``).
  mmdet Swin's LayerNorms on the P3/P4 outputs (``norm1``/``norm2``) are kept as ``Permute -> nn.LayerNorm ->
  Permute`` layers after the ``Index`` layers (P5's ``norm3`` is timm's final norm, applied by ``TimmFeatures``).
* Neck: ``YOLOv8PAFPN`` layers map in yaml order (top_down 0/1, downsample 0, bottom_up 0, downsample 1,
  bottom_up 1) onto the C2f/Conv rows of the yaml head; C2f ``main_conv/final_conv/blocks.i.conv1/2`` ->
  ``cv1/cv2/m.i.cv1/2``, SPPF ``conv1/2`` -> ``cv1/2``.
* Head: ``reg_preds`` -> ``cv2``, ``cls_preds`` -> ``cv3`` (legacy YOLOv8 head), plus ``dfl.conv.weight = arange(16)``.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ._common import ConversionError, Coverage

__all__ = ["rename_csp", "convert_cspdarknet", "detector_yaml", "convert_yolo_detector", "build_from_yaml"]

_PAFPN_C2F = ("top_down_layers.0", "top_down_layers.1", "bottom_up_layers.0", "bottom_up_layers.1")
_PAFPN_CONV = ("downsample_layers.0", "downsample_layers.1")
_SUB_RENAMES = (
    (r"^main_conv\.", "cv1."),
    (r"^final_conv\.", "cv2."),
    (r"^blocks\.(\d+)\.conv([12])\.", r"m.\1.cv\2."),
    (r"^conv([12])\.", r"cv\1."),
)


def rename_csp(rest: str) -> str:
    """mmyolo ConvModule / CSPLayerWithTwoConv / SPPF sub-key -> ultralytics Conv / C2f / SPPF sub-key."""
    for pattern, repl in _SUB_RENAMES:
        if re.match(pattern, rest):
            return re.sub(pattern, repl, rest)
    return rest


def convert_cspdarknet(state_dict: Mapping[str, Tensor], cov: Coverage) -> dict[str, Tensor]:
    """Our timm ``CSPDarknet`` state dict from mmyolo ``backbone.*`` keys."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = re.match(r"^backbone\.(stem|stage\d\.\d)\.(.+)$", key)
        if m:
            out[f"{m.group(1)}.{rename_csp(m.group(2))}"] = value
            cov.use(key)
    return out


def detector_yaml(backbone_id: str, nc: int = 1) -> dict[str, Any]:
    """The ultralytics yaml of an AGSSP YOLO detector: ``agssp_hub.yolo.yolo_yaml`` plus Swin's P3/P4 out-norms."""
    from ..yolo import yolo_yaml

    cfg = copy.deepcopy(yolo_yaml(backbone_id, nc))
    if not backbone_id.startswith("swin"):
        return cfg
    back = cfg["backbone"]
    if [row[2] for row in back] != ["TorchVision", "Index", "Index", "Index"]:
        raise ConversionError(f"unexpected yaml backbone rows for {backbone_id}: {back}")
    c3, c4 = back[1][3][0], back[2][3][0]

    def norm_rows(c: int) -> list[list[Any]]:
        return [
            [-1, 1, "torchvision.ops.Permute", [[0, 2, 3, 1]]],
            [-1, 1, "nn.LayerNorm", [c]],
            [-1, 1, "torchvision.ops.Permute", [[0, 3, 1, 2]]],
        ]

    cfg["backbone"] = [back[0], back[1], *norm_rows(c3), back[2], *norm_rows(c4), back[3]]
    remap = {0: 0, 1: 4, 2: 8, 3: 9}  # old backbone index -> new (P3/P4 now come out of their LayerNorm rows)
    shift = len(cfg["backbone"]) - len(back)

    def fix(f: Any, row: int) -> Any:
        if isinstance(f, list):
            return [fix(x, row) for x in f]
        if f < 0:
            return f
        return remap[f] if f in remap else f + shift

    cfg["head"] = [[fix(r[0], i), *r[1:]] for i, r in enumerate(cfg["head"])]
    cfg["agssp_backbone"] = {**cfg.get("agssp_backbone", {}), "out_norms": "mmdet norm1/norm2 on P3/P4"}
    return cfg


def build_from_yaml(cfg: Mapping[str, Any], stem: str, names: list[str] | None = None) -> Any:
    """An ultralytics ``YOLO`` from a yaml dict, set up like ``agssp_hub.yolo.build_yolo`` (weights kept by train)."""
    import tempfile
    from pathlib import Path

    from ultralytics import YOLO
    from ultralytics.utils import YAML

    cfg = copy.deepcopy(dict(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{stem}.yaml"
        YAML.save(path, {k: v for k, v in cfg.items() if k != "yaml_file"})
        yolo = YOLO(str(path), task="detect", verbose=False)
    yolo.model.yaml = cfg
    yolo.model.yaml["yaml_file"] = f"{stem}.yaml"
    yolo.overrides["model"] = yolo.cfg = f"{stem}.yaml"
    nc = int(cfg["nc"])
    yolo.model.names = dict(enumerate(names)) if names else {i: str(i) for i in range(nc)}
    yolo.ckpt = {"model": yolo.model}  # Model.train() transfers weights only when a checkpoint is set
    return yolo


def _rows(cfg: Mapping[str, Any]) -> list[tuple[int, str]]:
    return [(i, row[2]) for i, row in enumerate(list(cfg["backbone"]) + list(cfg["head"]))]


def convert_yolo_detector(
    state_dict: Mapping[str, Tensor],
    cfg: Mapping[str, Any],
    backbone_sd: Mapping[str, Tensor],
    out_norms: Mapping[str, Tensor],
    cov: Coverage,
) -> dict[str, Tensor]:
    """The full ultralytics state dict (``model.N.*``) of an mmyolo YOLOv8 detector with the yaml ``cfg``."""
    rows = _rows(cfg)
    native = "agssp_backbone" not in cfg
    out: dict[str, Tensor] = {}
    if native:
        from ..models.cspdarknet import cspdarknet_to_ultralytics

        out.update(cspdarknet_to_ultralytics(dict(backbone_sd)))
    else:
        out.update({f"model.0.m.body.{k}": v for k, v in backbone_sd.items()})
        norm_layers = [i for i, kind in rows if kind == "nn.LayerNorm"]
        for level, layer in zip((1, 2), norm_layers):
            for p in ("weight", "bias"):
                key = f"backbone.norm{level}.{p}"
                if key not in state_dict:
                    raise ConversionError(f"the Swin YOLO detector lacks {key}")
                out[f"model.{layer}.{p}"] = state_dict[key]
                cov.use(key)
    head_start = len(cfg["backbone"])
    c2f = [i for i, kind in rows[head_start:] if kind == "C2f"]
    conv = [i for i, kind in rows[head_start:] if kind == "Conv"]
    detect = [i for i, kind in rows if kind == "Detect"]
    if len(c2f) != 4 or len(conv) != 2 or len(detect) != 1:
        raise ConversionError(f"yaml head is not a YOLOv8 PAFPN + Detect: C2f {c2f}, Conv {conv}, Detect {detect}")
    layer_of = dict(zip(_PAFPN_C2F, c2f)) | dict(zip(_PAFPN_CONV, conv))
    for key, value in state_dict.items():
        m = re.match(r"^neck\.((?:top_down|bottom_up|downsample)_layers\.\d+)\.(.+)$", key)
        if m and m.group(1) in layer_of:
            out[f"model.{layer_of[m.group(1)]}.{rename_csp(m.group(2))}"] = value
            cov.use(key)
            continue
        m = re.match(r"^bbox_head\.head_module\.(reg_preds|cls_preds)\.(\d+)\.(.+)$", key)
        if m:
            branch = "cv2" if m.group(1) == "reg_preds" else "cv3"
            out[f"model.{detect[0]}.{branch}.{m.group(2)}.{m.group(3)}"] = value
            cov.use(key)
    reg_max = int(cfg.get("reg_max", 16))
    out[f"model.{detect[0]}.dfl.conv.weight"] = torch.arange(reg_max, dtype=torch.float32).view(1, reg_max, 1, 1)
    return out
