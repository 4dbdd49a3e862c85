"""Converters for the six official AGSSP (mmyolo / mmdet) checkpoints into timm backbones and detectors.

``agssp-hub convert FILE [--name NAME]`` (:mod:`agssp_hub.convert.cli`) or :func:`convert_file` from Python.
"""
from __future__ import annotations

from ._common import ConversionError, Coverage, MMCheckpoint, describe_backbone, detect_model, load_mm_checkpoint
from ._pipeline import ConversionResult, convert_checkpoint, convert_file

__all__ = [
    "ConversionError",
    "ConversionResult",
    "Coverage",
    "MMCheckpoint",
    "convert_checkpoint",
    "convert_file",
    "describe_backbone",
    "detect_model",
    "load_mm_checkpoint",
]
