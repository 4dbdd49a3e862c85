"""Shared conversion machinery: safe loading of mmengine checkpoints, model detection, coverage accounting.

mmengine checkpoints (``Runner.save_checkpoint``) hold ``meta``, ``state_dict``, ``message_hub``, ``optimizer``
and, for YOLO runs, ``ema_state_dict``; ``meta``/``message_hub`` may pickle mmengine or numpy objects that
``torch.load(weights_only=True)`` refuses. Such bookkeeping globals are replaced by inert placeholders inside torch's
restricted unpickler (nothing is imported or called); any other global makes the load fail with the names listed.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._registry import list_checkpoints
from .._weights import AgsspHubError, sha256_file

__all__ = [
    "ConversionError",
    "MMCheckpoint",
    "Coverage",
    "load_mm_checkpoint",
    "detect_model",
    "describe_backbone",
    "strip_prefix",
    "BACKBONE_OF",
    "check_target",
]

# Top-level modules whose pickled objects may appear in mmengine `meta` / `message_hub`; they become placeholders.
_BOOKKEEPING_ROOTS = ("mmengine", "mmcv", "mmdet", "mmyolo", "mmpretrain", "mmseg", "numpy")

# Registry detector name -> registry backbone name (from the registry, the one source of truth).
BACKBONE_OF = {c.name: c.backbone for c in list_checkpoints("detector") if c.backbone}
_SWIN_BASE = dict(embed_dim=128, depths=(2, 2, 18, 2))


class ConversionError(AgsspHubError, ValueError):
    """A checkpoint cannot be converted: unreadable, unsafe, of the wrong architecture, or incompletely mapped."""


class _Placeholder:
    """Inert stand-in for a pickled bookkeeping object; it only records the arguments it was given."""

    _qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<placeholder for {self._qualname}>"


def _placeholder(full_path: str) -> type[_Placeholder]:
    return type(full_path.rsplit(".", 1)[-1], (_Placeholder,), {"_qualname": full_path})


@dataclass
class MMCheckpoint:
    """A loaded checkpoint: its tensors, file identity and what else the file held."""

    path: Path
    sha256: str
    size: int
    state_dict: dict[str, Tensor]
    top_level: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    placeholders: tuple[str, ...] = ()

    def source(self, **extra: Any) -> dict[str, Any]:
        """The ``source`` record stored in the install manifest."""
        return {
            "kind": "official",
            "file": self.path.name,
            "sha256": self.sha256,
            "size": self.size,
            "converted_by": "agssp-hub convert",
            **{k: v for k, v in self.meta.items() if k in ("mmengine_version", "epoch", "iter", "experiment_name")},
            **extra,
        }


def _torch_load(path: Path) -> tuple[Any, tuple[str, ...]]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True), ()
    except Exception as err:  # noqa: BLE001  (any failure: retry only for refused globals)
        first_error = err
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001  (not a zip checkpoint at all)
        unsafe = None
    if not unsafe:
        raise ConversionError(
            f"{path}: not a readable PyTorch checkpoint ({type(first_error).__name__}: "
            f"{str(first_error).splitlines()[0] if str(first_error) else ''})"
        ) from None
    foreign = [g for g in unsafe if g.split(".", 1)[0] not in _BOOKKEEPING_ROOTS]
    if foreign:
        raise ConversionError(
            f"{path}: refusing to load: its pickle references {', '.join(sorted(foreign))}, which is neither a "
            "tensor nor mmengine/numpy bookkeeping. agssp-hub only reads checkpoints with "
            "torch.load(weights_only=True) and never executes pickled code; if the file is genuine, re-save its "
            "tensors with torch.save(ckpt['state_dict'], 'clean.pth') in a trusted environment."
        )
    stubs = [(_placeholder(g), g) for g in unsafe]
    try:
        with torch.serialization.safe_globals(stubs):
            return torch.load(path, map_location="cpu", weights_only=True), tuple(unsafe)
    except Exception as err:  # noqa: BLE001
        raise ConversionError(f"{path}: cannot be read even with placeholder bookkeeping objects: {err}") from None


def _plain_meta(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, Mapping):
        return {}
    return {k: v for k, v in meta.items() if isinstance(k, str) and isinstance(v, (str, int, float, bool))}


def load_mm_checkpoint(path: str | os.PathLike[str]) -> MMCheckpoint:
    """Load an mmengine (or bare) checkpoint with ``weights_only=True`` and pick its model state dict."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    obj, placeholders = _torch_load(path)
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    top = tuple(str(k) for k in obj)
    if isinstance(obj.get("state_dict"), Mapping):
        sd = obj["state_dict"]  # mmengine: EMA weights for YOLO runs (swapped in before saving)
    elif isinstance(obj.get("ema_state_dict"), Mapping):
        sd = {k.removeprefix("module."): v for k, v in obj["ema_state_dict"].items() if k != "steps"}
    elif isinstance(obj.get("model"), Mapping):
        sd = obj["model"]
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        sd = obj  # a bare state dict
    else:
        raise ConversionError(f"{path}: no state dict found; top-level keys: {', '.join(top)}")
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise ConversionError(f"{path}: state dict entries are not tensors: {', '.join(map(str, bad[:5]))}")
    sd = {str(k).removeprefix("module."): v for k, v in sd.items()}
    return MMCheckpoint(
        path=path,
        sha256=sha256_file(path),
        size=path.stat().st_size,
        state_dict=sd,
        top_level=top,
        meta=_plain_meta(obj.get("meta")),
        placeholders=placeholders,
    )


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _has(sd: Iterable[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in sd)


def describe_backbone(state_dict: Mapping[str, Tensor], origin: str = "checkpoint") -> str:
    """Which AGSSP backbone entry the ``backbone.*`` keys hold; a clear error when none fits."""
    sd = state_dict
    if _has(sd, "backbone.stages."):
        emb = sd.get("backbone.patch_embed.projection.weight")
        depths = tuple(
            1 + max((int(m.group(1)) for k in sd if (m := re.match(rf"backbone\.stages\.{s}\.blocks\.(\d+)\.", k))), default=-1)
            for s in range(4)
        )
        dim = None if emb is None else int(emb.shape[0])
        if dim != _SWIN_BASE["embed_dim"] or depths != _SWIN_BASE["depths"]:
            raise ConversionError(
                f"{origin}: a Swin backbone with embed_dim={dim} depths={depths} is not Swin-B "
                f"(embed_dim=128, depths=(2, 2, 18, 2)); no AGSSP checkpoint has this architecture"
            )
        tables = [v for k, v in sd.items() if k.endswith("relative_position_bias_table")]
        window = {169: 7, 121: 6}.get(int(tables[0].shape[0])) if tables else None
        if window is None:
            raise ConversionError(f"{origin}: Swin-B relative position tables fit neither window 7 nor window 6")
        return f"agssp_swin_base_w{window}"
    if _has(sd, "backbone.layer1."):
        blocks = tuple(
            1 + max((int(m.group(1)) for k in sd if (m := re.match(rf"backbone\.layer{i}\.(\d+)\.", k))), default=-1)
            for i in range(1, 5)
        )
        bottleneck = "backbone.layer1.0.conv3.weight" in sd
        if blocks != (3, 4, 6, 3) or not bottleneck:
            raise ConversionError(
                f"{origin}: a ResNet backbone with blocks {blocks} ({'bottleneck' if bottleneck else 'basic'}) is not "
                "ResNet-50 (3, 4, 6, 3 bottlenecks); no AGSSP checkpoint has this architecture"
            )
        return "agssp_resnet50"
    if _has(sd, "backbone.stem.") and _has(sd, "backbone.stage4."):
        stem = sd.get("backbone.stem.conv.weight")
        width = None if stem is None else int(stem.shape[0])
        if width != 32 or "backbone.stage4.2.conv1.conv.weight" not in sd:
            raise ConversionError(
                f"{origin}: a CSPDarknet backbone with stem width {width} is not YOLOv8-s (stem 32, SPPF in "
                "stage4.2); no AGSSP checkpoint has this architecture"
            )
        return "agssp_cspdarknet_s"
    prefixes = sorted({k.split(".", 1)[0] for k in sd})
    raise ConversionError(
        f"{origin}: no backbone.* keys of an AGSSP backbone (ResNet-50, Swin-B, YOLOv8-s CSPDarknet); "
        f"top-level key prefixes: {', '.join(prefixes[:12])}"
    )


def detect_model(state_dict: Mapping[str, Tensor], origin: str = "checkpoint") -> str:
    """The registry name of the official model a state dict holds (a backbone name for AGBP-stage files)."""
    backbone = describe_backbone(state_dict, origin)
    sd = state_dict
    if _has(sd, "bbox_head.head_module."):
        name = {
            "agssp_cspdarknet_s": "agssp_yolov8s",
            "agssp_resnet50": "agssp_yolov8s_resnet50",
            "agssp_swin_base_w7": "agssp_yolov8s_swin_base_w7",
            "agssp_swin_base_w6": "agssp_yolov8s_swin_base_w6",
        }[backbone]
    elif _has(sd, "rpn_head.") and _has(sd, "roi_head."):
        name = "agssp_faster_rcnn_swin_base_w6"
    elif _has(sd, "encoder.layers.") or _has(sd, "dn_query_generator."):
        name = "agssp_dino_swin_base_w6"
    else:
        return backbone  # AGBP-stage file: backbone (+ 61-class head / SimMIM decoder)
    if BACKBONE_OF[name] != backbone:
        raise ConversionError(
            f"{origin}: a {name.removeprefix('agssp_')} detector with a {backbone.removeprefix('agssp_')} backbone "
            f"is not an official AGSSP model (expected {BACKBONE_OF[name].removeprefix('agssp_')})"
        )
    return name


@dataclass
class Coverage:
    """Which source tensors a conversion used, per module group, and which target tensors it filled."""

    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> source keys
    used: set[str] = field(default_factory=set)
    dropped: dict[str, str] = field(default_factory=dict)  # source key -> why it is intentionally unused
    missing: list[str] = field(default_factory=list)  # target keys nothing filled
    mismatched: list[str] = field(default_factory=list)  # "key: source shape vs target shape"

    @classmethod
    def of(cls, state_dict: Mapping[str, Tensor], group_of: dict[str, str] | None = None) -> Coverage:
        """Group source keys: ``backbone.*``, ``neck.*``, everything else (heads, DINO transformer) is ``head``."""
        mapping = {"backbone": "backbone", "neck": "neck", **(group_of or {})}
        cov = cls()
        for key in state_dict:
            group = mapping.get(key.split(".", 1)[0], "head")
            cov.groups.setdefault(group, []).append(key)
        return cov

    def use(self, key: str) -> None:
        """Mark a source key as transferred."""
        self.used.add(key)

    def drop(self, key: str, why: str) -> None:
        """Mark a source key as intentionally not transferred."""
        self.dropped[key] = why

    def unused(self, group: str) -> list[str]:
        """Source keys of ``group`` neither transferred nor dropped on purpose."""
        return [k for k in self.groups.get(group, []) if k not in self.used and k not in self.dropped]

    def complete(self, group: str) -> bool:
        """Whether every key of ``group`` was transferred (or dropped with a reason) and nothing is missing."""
        return not self.unused(group)

    def table(self) -> str:
        """A plain-text coverage table: transferred/total per group, plus what was dropped and why."""
        lines = [f"{'group':<12}{'transferred':>12}{'total':>8}{'dropped':>9}{'unmapped':>10}"]
        for group in sorted(self.groups, key=lambda g: ("backbone", "neck", "head").index(g) if g in ("backbone", "neck", "head") else 9):
            keys = self.groups[group]
            n_used = sum(k in self.used for k in keys)
            n_drop = sum(k in self.dropped for k in keys)
            lines.append(f"{group:<12}{n_used:>12}{len(keys):>8}{n_drop:>9}{len(keys) - n_used - n_drop:>10}")
        reasons: dict[str, int] = {}
        for why in self.dropped.values():
            reasons[why] = reasons.get(why, 0) + 1
        for why, n in sorted(reasons.items()):
            lines.append(f"  dropped {n}: {why}")
        return "\n".join(lines)


def check_target(
    target: Mapping[str, Tensor], produced: Mapping[str, Tensor], what: str, origin: str
) -> None:
    """Raise a ConversionError naming keys missing/unexpected/mis-shaped between ``produced`` and ``target``."""
    missing = sorted(set(target) - set(produced))
    unexpected = sorted(set(produced) - set(target))
    shapes = [
        f"{k}: {tuple(produced[k].shape)} vs {tuple(target[k].shape)}"
        for k in sorted(set(target) & set(produced))
        if produced[k].shape != target[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {'; '.join(shapes[:8])}")
        raise ConversionError(f"{origin}: the converted {what} does not fit its target: {' | '.join(parts)}")
