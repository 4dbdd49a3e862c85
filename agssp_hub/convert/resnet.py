"""ResNet-50 (mmdet / mmpretrain) -> timm ``resnet50``: the names already match torchvision's, only the prefix goes."""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ._common import Coverage

__all__ = ["convert_resnet50"]


def convert_resnet50(state_dict: Mapping[str, Tensor], cov: Coverage) -> dict[str, Tensor]:
    """timm ``resnet50`` state dict (no ``fc``) from the ``backbone.*`` keys of an mm checkpoint."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            out[key[len("backbone."):]] = value
            cov.use(key)
    return out
