"""mmdet DINO 4-scale (Swin-B w6): only the backbone is converted (to ``agssp_swin_base_w6``).

The deformable-attention transformer (``encoder``, ``decoder``, ``dn_query_generator``, ...) has no torchvision or
ultralytics counterpart, so those tensors are reported as dropped; the Swin backbone (identical to the AGBP one,
frozen during AGDP) goes through :mod:`agssp_hub.convert.swin`.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ._common import Coverage

__all__ = ["DROP_REASON", "drop_dino_transformer"]

DROP_REASON = "DINO neck/transformer/head: no torchvision or ultralytics counterpart (backbone-only conversion)"


def drop_dino_transformer(state_dict: Mapping[str, Tensor], cov: Coverage) -> None:
    """Mark every non-backbone tensor of a DINO checkpoint as intentionally dropped."""
    for key in state_dict:
        if not key.startswith("backbone."):
            cov.drop(key, DROP_REASON)
