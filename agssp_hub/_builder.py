"""Build registered backbones: verified weights are handed to timm as a ``file`` source."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
from torch import nn

from ._registry import get_checkpoint

__all__ = ["build_verified", "create_stock_backbone"]


def build_verified(name: str, pretrained: bool, kwargs: dict[str, Any], build: Callable[..., nn.Module]) -> nn.Module:
    """Call ``build(**kwargs)`` with ``name``'s cached weights as the timm ``file`` source, sha256-verified.

    The hash runs in a thread while timm builds the network; the model is returned only once the file's full
    sha256 matched, so a corrupted or replaced file never reaches the caller.
    """
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    if not pretrained or "file" in overlay or "state_dict" in overlay:
        return build(**kwargs)
    from ._weights import resolve_file, verify_in_background

    path = resolve_file(name, verify=False)
    check = verify_in_background(name, path)
    overlay["file"] = str(path)
    try:
        model = build(**{**kwargs, "pretrained_cfg_overlay": overlay})
    finally:
        check()
    return model


def create_stock_backbone(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Create a registered backbone whose architecture is a stock timm one (resnet50, swin, efficientnet)."""
    entry = get_checkpoint(name)
    if kwargs.get("pretrained_cfg") is None:
        kwargs["pretrained_cfg"] = timm.models.get_pretrained_cfg(f"{name}.agssp_metal")
    for key, value in entry.model_args.items():
        kwargs.setdefault(key, value)
    return build_verified(name, pretrained, kwargs,
                          lambda **kw: timm.create_model(entry.architecture, pretrained=pretrained, **kw))
