"""YOLOv8 CSPDarknet backbone as a timm model.

timm has no C2f/SPPF architecture, so the YOLOv8 backbone used by AGSSP's CSPDarknet checkpoints is defined here
and registered with timm (``agssp_cspdarknet_s``). Module names run parallel to ultralytics' ``model.0`` ...
``model.9`` (``stem``, ``stage1.0`` ... ``stage4.2``) with identical sub-keys (``conv``/``bn``, ``cv1``/``cv2``/``m``),
so weights move between the two by renaming the top-level prefix only.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, register_model
from timm.models._registry import generate_default_cfgs

from .._builder import build_verified
from .._registry import timm_cfg

__all__ = ["CSPDarknet", "ultralytics_to_cspdarknet", "cspdarknet_to_ultralytics"]

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


class ConvBnAct(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU, key-compatible with ultralytics ``Conv``."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chs, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Apply conv, norm and activation."""
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 convs with an optional residual, key-compatible with ultralytics ``Bottleneck``."""

    def __init__(self, chs: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = ConvBnAct(chs, chs, 3)
        self.cv2 = ConvBnAct(chs, chs, 3)
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        """Apply both convs and the residual."""
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with two convs and ``depth`` bottlenecks, key-compatible with ultralytics ``C2f``."""

    def __init__(self, in_chs: int, out_chs: int, depth: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        self.hidden = out_chs // 2
        self.cv1 = ConvBnAct(in_chs, 2 * self.hidden, 1)
        self.cv2 = ConvBnAct((2 + depth) * self.hidden, out_chs, 1)
        self.m = nn.ModuleList(Bottleneck(self.hidden, shortcut) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        """Split, run the bottleneck chain, concatenate every intermediate and fuse."""
        ys = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            ys.append(block(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast), key-compatible with ultralytics ``SPPF`` (YOLOv8 variant, activated cv1)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 5) -> None:
        super().__init__()
        hidden = in_chs // 2
        self.cv1 = ConvBnAct(in_chs, hidden, 1)
        self.cv2 = ConvBnAct(hidden * 4, out_chs, 1)
        self.pool = nn.MaxPool2d(kernel_size, 1, kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        """Pool three times in a row and fuse all four maps."""
        ys = [self.cv1(x)]
        for _ in range(3):
            ys.append(self.pool(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class CSPDarknet(nn.Module):
    """YOLOv8 CSPDarknet (P5) backbone with a timm classification head interface."""

    def __init__(
        self,
        widths: tuple[int, ...] = (32, 64, 128, 256, 512),
        depths: tuple[int, ...] = (1, 2, 2, 1),
        num_classes: int = 0,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.stem = ConvBnAct(in_chans, widths[0], 3, 2)
        self.feature_info = [dict(num_chs=widths[0], reduction=2, module="stem")]
        for i, depth in enumerate(depths):
            layers: list[nn.Module] = [ConvBnAct(widths[i], widths[i + 1], 3, 2), C2f(widths[i + 1], widths[i + 1], depth)]
            if i == len(depths) - 1:
                layers.append(SPPF(widths[i + 1], widths[i + 1]))
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))
            self.feature_info.append(dict(num_chs=widths[i + 1], reduction=2 ** (i + 2), module=f"stage{i + 1}"))
        self.num_features = self.head_hidden_size = widths[-1]
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """Return the classifier layer."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """Replace the head with a fresh ``num_classes`` classifier (0 for none)."""
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """Return the stride-32 feature map."""
        x = self.stem(x)
        for i in range(1, 5):
            x = getattr(self, f"stage{i}")(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool and classify."""
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        """Features then head."""
        return self.forward_head(self.forward_features(x))


_ULTRA_TO_OURS = {
    "0": "stem", "1": "stage1.0", "2": "stage1.1", "3": "stage2.0", "4": "stage2.1",
    "5": "stage3.0", "6": "stage3.1", "7": "stage4.0", "8": "stage4.1", "9": "stage4.2",
}
_OURS_TO_ULTRA = {v: k for k, v in _ULTRA_TO_OURS.items()}


def ultralytics_to_cspdarknet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Take the backbone (``model.0``-``model.9``) out of an ultralytics YOLOv8 state dict."""
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"^model\.(\d+)\.(.+)$", key)
        if m and m.group(1) in _ULTRA_TO_OURS:
            out[f"{_ULTRA_TO_OURS[m.group(1)]}.{m.group(2)}"] = value
    return out


def cspdarknet_to_ultralytics(state_dict: dict[str, Tensor], prefix: str = "model.") -> dict[str, Tensor]:
    """Rename CSPDarknet keys to ultralytics ``model.N`` keys (the classifier is dropped)."""
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"^(stem|stage\d\.\d)\.(.+)$", key)
        if m and m.group(1) in _OURS_TO_ULTRA:
            out[f"{prefix}{_OURS_TO_ULTRA[m.group(1)]}.{m.group(2)}"] = value
    return out


def _create_cspdarknet(variant: str, pretrained: bool = False, **kwargs: Any) -> CSPDarknet:
    return build_model_with_cfg(
        CSPDarknet,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=False, out_indices=(2, 3, 4)),
        **kwargs,
    )


default_cfgs = generate_default_cfgs({"agssp_cspdarknet_s.agssp_metal": timm_cfg("agssp_cspdarknet_s")})


@register_model
def agssp_cspdarknet_s(pretrained: bool = False, **kwargs: Any) -> CSPDarknet:
    """YOLOv8-s CSPDarknet, AGSSP-pretrained on metal surfaces (AGBP backbone of the official YOLOv8-s AGSSP)."""
    model_args = dict(widths=(32, 64, 128, 256, 512), depths=(1, 2, 2, 1))
    return build_verified("agssp_cspdarknet_s", pretrained, {**model_args, **kwargs},
                          lambda **kw: _create_cspdarknet("agssp_cspdarknet_s", pretrained, **kw))
