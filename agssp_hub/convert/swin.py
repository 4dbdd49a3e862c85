"""Swin-B (mmdet / mmpretrain layout) -> timm ``swin_base_patch4_window7_224`` (window 7, or 6 via ``window_size``).

Steps (method-spec §6.3): rename mm keys to the original Microsoft layout, undo mm's ``nn.Unfold`` channel order in
the patch-merging layers, then let timm's own ``checkpoint_filter_fn`` move each downsample from the end of stage s
to the start of stage s+1 and drop the ``relative_position_index`` buffers (checked here against timm's index).
mm's ``norm3`` becomes timm's final ``norm``; ``norm0``-``norm2`` (LayerNorms on the detector's stage outputs) have
no timm equivalent and are returned separately for the detectors that use them.

Numerical note: the converted timm backbone follows the original Swin / mmpretrain behaviour (no shift when a
feature map is no larger than the window). mmdet's detector backbone pads to a multiple of the window *before* the
cyclic shift and always shifts, so at detection sizes not divisible by the window (640 px: 160/80/40/20 tokens)
the mmdet features differ slightly from any timm Swin.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ._common import ConversionError, Coverage

__all__ = ["mm_swin_to_official", "convert_swin", "unfold_to_official"]

_RENAMES = (
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^patch_embed\.norm\.", "patch_embed.norm."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.", r"layers.\1.blocks.\2.attn."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.0\.0\.", r"layers.\1.blocks.\2.mlp.fc1."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.1\.", r"layers.\1.blocks.\2.mlp.fc2."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.(norm[12])\.", r"layers.\1.blocks.\2.\3."),
    (r"^stages\.(\d+)\.downsample\.", r"layers.\1.downsample."),
    (r"^norm3\.", "norm."),
)


def unfold_to_official(key: str, value: Tensor) -> Tensor:
    """Reorder a patch-merging tensor from mm's unfold order (c, kh·2+kw) to the original (k, c), k = [0,2,1,3]."""
    if key.endswith("reduction.weight"):
        out_ch, in_ch = value.shape
        return value.reshape(out_ch, in_ch // 4, 4)[:, :, [0, 2, 1, 3]].transpose(1, 2).reshape(out_ch, in_ch)
    if key.endswith(("norm.weight", "norm.bias")):
        return value.reshape(-1, 4)[:, [0, 2, 1, 3]].transpose(0, 1).reshape(-1)
    raise ConversionError(f"unexpected patch-merging tensor {key}")


def mm_swin_to_official(backbone: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str]]:
    """Split prefix-free mm Swin keys into (official-layout state dict, out-norm tensors, unknown keys)."""
    official: dict[str, Tensor] = {}
    out_norms: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in backbone.items():
        if re.match(r"^norm[012]\.", key):
            out_norms[key] = value
            continue
        new = None
        for pattern, repl in _RENAMES:
            if re.match(pattern, key):
                new = re.sub(pattern, repl, key)
                break
        if new is None:
            unknown.append(key)
            continue
        if ".downsample." in new:
            value = unfold_to_official(new, value)
        official[new] = value
    return official, out_norms, unknown


def _check_index(official: Mapping[str, Tensor], model: nn.Module, origin: str) -> None:
    """mm and timm must agree on the relative position index the tables are read with."""
    from timm.models.swin_transformer import get_relative_position_index

    for key, value in official.items():
        if key.endswith("relative_position_index"):
            size = int(round(((value.shape[0]) ** 0.5)))
            ref = get_relative_position_index(size, size)
            if value.shape != ref.shape or not torch.equal(value.long(), ref.long()):
                raise ConversionError(f"{origin}: {key} differs from the standard Swin relative position index")


def convert_swin(
    state_dict: Mapping[str, Tensor], model: nn.Module, cov: Coverage, origin: str = "checkpoint"
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """timm Swin state dict for ``model`` (shapes only are read) and the mm out-norm tensors, from ``backbone.*``."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    backbone = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    official, out_norms, unknown = mm_swin_to_official(backbone)
    for key in backbone:
        if key == "mask_token":
            cov.drop(f"backbone.{key}", "SimMIM mask token (pretraining only)")
        elif key not in unknown and not re.match(r"^norm[012]\.", key):
            cov.use(f"backbone.{key}")
    _check_index(official, model, origin)
    timm_sd = checkpoint_filter_fn(official, model)
    return timm_sd, out_norms
