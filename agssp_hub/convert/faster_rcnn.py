"""mmdet Faster R-CNN (Swin-B w6 + FPN + RPN + Shared2FC RoI head) -> torchvision ``FasterRCNN`` (``agssp_hub.detectors``).

Background class: mmdet puts it last in ``fc_cls`` and has no background box regressor; torchvision puts it first
and regresses every class, so the classifier rows are rotated and the background regressor is zero.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from ._common import Coverage

__all__ = ["convert_faster_rcnn"]

_DIRECT = (
    (r"^neck\.lateral_convs\.(\d+)\.conv\.", r"backbone.fpn.inner_blocks.\1.0."),
    (r"^neck\.fpn_convs\.(\d+)\.conv\.", r"backbone.fpn.layer_blocks.\1.0."),
    (r"^rpn_head\.rpn_conv\.", "rpn.head.conv.0.0."),
    (r"^rpn_head\.rpn_cls\.", "rpn.head.cls_logits."),
    (r"^rpn_head\.rpn_reg\.", "rpn.head.bbox_pred."),
    (r"^roi_head\.bbox_head\.shared_fcs\.0\.", "roi_heads.box_head.fc6."),
    (r"^roi_head\.bbox_head\.shared_fcs\.1\.", "roi_heads.box_head.fc7."),
    (r"^backbone\.norm([012])\.", r"backbone.out_norms.\1."),
)


def convert_faster_rcnn(
    state_dict: Mapping[str, Tensor], backbone_sd: Mapping[str, Tensor], cov: Coverage
) -> dict[str, Tensor]:
    """The torchvision ``FasterRCNN`` state dict of an mmdet Faster R-CNN checkpoint (Swin keys already converted)."""
    out: dict[str, Tensor] = {f"backbone.body.{k}": v for k, v in backbone_sd.items()}
    for key, value in state_dict.items():
        for pattern, repl in _DIRECT:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                cov.use(key)
                break
        else:
            m = re.match(r"^roi_head\.bbox_head\.(fc_cls|fc_reg)\.(weight|bias)$", key)
            if not m:
                continue
            if m.group(1) == "fc_cls":  # [c_0 .. c_{n-1}, bg] -> [bg, c_0 .. c_{n-1}]
                out[f"roi_heads.box_predictor.cls_score.{m.group(2)}"] = torch.cat([value[-1:], value[:-1]])
            else:  # class-specific deltas; torchvision also has (unused) background deltas
                out[f"roi_heads.box_predictor.bbox_pred.{m.group(2)}"] = torch.cat([torch.zeros_like(value[:4]), value])
            cov.use(key)
    return out
