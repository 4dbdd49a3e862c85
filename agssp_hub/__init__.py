"""agssp-hub: AGSSP backbones and detectors for metal surface defects, served through timm, torch.hub and the HF Hub.

Importing the package registers the ``agssp_*`` backbones with timm. Detector and pipeline code (ultralytics,
transformers, open_clip) is imported only when used.
"""
from __future__ import annotations

from typing import Any

from . import models as _models  # noqa: F401  (registers the backbones with timm)
from ._registry import REGISTRY, Checkpoint, Metric, get_checkpoint, list_checkpoints
from ._weights import AgsspHubError, HashMismatchError, MissingWeightsError, resolve_file, sha256_file

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "AgsspHubError",
    "Checkpoint",
    "HashMismatchError",
    "Metric",
    "MissingWeightsError",
    "create_backbone",
    "get_checkpoint",
    "list_checkpoints",
    "load_detector",
    "resolve_file",
    "sha256_file",
]


def create_backbone(name: str, pretrained: bool = True, **kwargs: Any) -> Any:
    """``timm.create_model`` for a registered AGSSP backbone (weights verified by sha256)."""
    import timm

    return timm.create_model(name, pretrained=pretrained, **kwargs)


def __getattr__(attr: str) -> Any:
    if attr == "load_detector":
        from .detectors import load_detector

        return load_detector
    raise AttributeError(f"module 'agssp_hub' has no attribute {attr!r}")
