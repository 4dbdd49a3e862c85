"""Build registered backbones: verified weights are handed to timm as a ``file`` source."""
from __future__ import annotations

from typing import Any

import timm
from torch import nn

from ._registry import get_checkpoint

__all__ = ["resolve_pretrained_file", "create_stock_backbone"]


def resolve_pretrained_file(name: str, pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return ``kwargs`` with ``pretrained_cfg_overlay.file`` set to the sha256-verified weights of ``name``."""
    if not pretrained:
        return kwargs
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    if "file" not in overlay and "state_dict" not in overlay:
        from ._weights import resolve_file

        overlay["file"] = str(resolve_file(name))
    return {**kwargs, "pretrained_cfg_overlay": overlay}


def create_stock_backbone(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Create a registered backbone whose architecture is a stock timm one (resnet50, swin, efficientnet)."""
    entry = get_checkpoint(name)
    if kwargs.get("pretrained_cfg") is None:
        kwargs["pretrained_cfg"] = timm.models.get_pretrained_cfg(f"{name}.agssp_metal")
    kwargs = resolve_pretrained_file(name, pretrained, kwargs)
    for key, value in entry.model_args.items():
        kwargs.setdefault(key, value)
    return timm.create_model(entry.architecture, pretrained=pretrained, **kwargs)
