"""YOLOv8 detectors on AGSSP/timm backbones for ultralytics (the AGDP and fine-tuning model).

A timm backbone enters an ultralytics model yaml through ultralytics' own ``TorchVision`` + ``Index`` modules: the
backbone is registered as a torchvision model builder (``agssp_timm_<id>``) returning :class:`TimmFeatures`, whose
forward gives the stride-8/16/32 feature maps as a list. The neck and head follow mmyolo ``YOLOv8PAFPN`` (widen 1.0,
deepen 0.33, so one bottleneck per C2f) + ``YOLOv8Head`` on the backbone's own channels (AGSSP method-spec §6.3).
``'cspdarknet_s'`` gives the stock ultralytics ``yolov8s`` yaml.

Pickled models reference this module, so ``YOLO(path)`` in a fresh process re-imports it; unpickling a
:class:`TimmFeatures` re-registers its builder, which ``YOLO.train()`` needs to rebuild the model from the yaml.
ultralytics is imported lazily (it is an optional extra).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "TimmFeatures",
    "backbone_spec",
    "register_backbone",
    "yolo_yaml",
    "build_yolo",
    "save_yolo",
    "load_yolo",
    "backbone_layers",
    "backbone_state_dict",
    "load_backbone_state_dict",
    "set_frozen_backbone_eval",
    "frozen_backbone_callback",
]

# Backbone id -> timm architecture and model_args (as in the registry), plus args only the detector needs.
BACKBONES: dict[str, dict[str, Any]] = {
    "resnet50": dict(architecture="resnet50", model_args={}),
    "swin_base_w7": dict(architecture="swin_base_patch4_window7_224", model_args={}),
    "swin_base_w6": dict(architecture="swin_base_patch4_window7_224", model_args=dict(window_size=6, img_size=192)),
    "tf_efficientnet_lite0": dict(architecture="tf_efficientnet_lite0", model_args={}),
    "cspdarknet_s": dict(architecture="agssp_cspdarknet_s", model_args={}, native="yolov8s.yaml"),
}
# Swin at detection sizes: any input size (masks built per forward), windows never shrink (as mmdet pads instead).
_DETECTOR_ARGS: dict[str, dict[str, Any]] = {
    "swin_base_patch4_window7_224": dict(strict_img_size=False, always_partition=True),
}
_STRIDES = (8, 16, 32)
_BUILDER_PREFIX = "agssp_timm_"
_SPECS: dict[str, tuple[str, str]] = {}  # builder name -> (architecture, json model_args)


class _TimmBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` under another type, so ultralytics' ``initialize_weights`` keeps the backbone's BN eps."""


def _keep_batchnorm(module: nn.Module) -> None:
    """Retype plain ``nn.BatchNorm2d`` modules (exact type) to :class:`_TimmBatchNorm2d` in place."""
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = _TimmBatchNorm2d


def feature_indices(model: nn.Module, strides: Sequence[int]) -> list[int]:
    """Indices into ``model.feature_info`` of the last feature map at each of ``strides``."""
    info = model.feature_info
    info = info.info if hasattr(info, "info") else info
    found: dict[int, int] = {}
    for i, f in enumerate(info):
        if f["reduction"] in strides:
            found[f["reduction"]] = i
    missing = [s for s in strides if s not in found]
    if missing:
        have = sorted({f["reduction"] for f in info})
        raise ValueError(f"{type(model).__name__}: no feature map at stride {missing} (has {have})")
    return [found[s] for s in strides]


class TimmFeatures(nn.Module):
    """A timm model returning its feature maps at the given strides as a list (ultralytics ``TorchVision`` payload).

    The timm model sits in ``body`` with its own parameter names, so ``body.state_dict()`` is a timm state dict.
    Models with ``forward_intermediates`` are pruned after the last tap (``prune=True``); others go through timm's
    ``FeatureListNet`` (same module objects, same names where the taps are top-level modules).
    """

    def __init__(
        self,
        architecture: str,
        model_args: Mapping[str, Any] | None = None,
        strides: Sequence[int] = _STRIDES,
        norm: bool = True,
        prune: bool = True,
    ) -> None:
        super().__init__()
        self.architecture = architecture
        self.model_args = dict(model_args or {})
        body = timm.create_model(architecture, pretrained=False, num_classes=0, **self.model_args)
        self.indices = feature_indices(body, strides)
        info = body.feature_info.info if hasattr(body.feature_info, "info") else body.feature_info
        self.channels = [int(info[i]["num_chs"]) for i in self.indices]
        self.strides = list(strides)
        self.norm = norm
        self.intermediates = hasattr(body, "forward_intermediates")
        if self.intermediates:
            if prune:
                body.prune_intermediate_layers(self.indices, prune_norm=not norm, prune_head=True)
        else:
            from timm.models import FeatureListNet

            body = FeatureListNet(body, out_indices=self.indices, flatten_sequential=False)
        _keep_batchnorm(body)
        self.body = body
        self._register()

    def _register(self) -> None:
        """Make sure a torchvision builder for this backbone exists in this process."""
        register_backbone(self.architecture, self.model_args)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, then re-register the builder (needed when ``YOLO(path).train()`` rebuilds from the yaml)."""
        super().__setstate__(state)
        self._register()

    def forward(self, x: Tensor) -> list[Tensor]:
        """Feature maps at ``self.strides``, NCHW."""
        if self.intermediates:
            return self.body.forward_intermediates(
                x, indices=self.indices, norm=self.norm, stop_early=True, output_fmt="NCHW", intermediates_only=True
            )
        return list(self.body(x))


def _builder_name(architecture: str, model_args: Mapping[str, Any]) -> str:
    """Deterministic torchvision registry name for a timm architecture + model_args."""
    for key, spec in BACKBONES.items():
        same_args = _detector_args(architecture, spec["model_args"]) == dict(model_args)
        if spec["architecture"] == architecture and same_args:
            return _BUILDER_PREFIX + key
    name = _BUILDER_PREFIX + re.sub(r"[^a-z0-9_]", "_", architecture.lower())
    if model_args:
        digest = hashlib.sha256(json.dumps(dict(model_args), sort_keys=True).encode()).hexdigest()[:8]
        name += f"_{digest}"
    return name


def _detector_args(architecture: str, model_args: Mapping[str, Any]) -> dict[str, Any]:
    """model_args plus what the architecture needs inside a detector (e.g. Swin at any input size)."""
    return {**_DETECTOR_ARGS.get(architecture, {}), **dict(model_args)}


def _build_features(architecture: str, model_args_json: str, weights: Any = None, **_: Any) -> TimmFeatures:
    """torchvision builder: a randomly initialised :class:`TimmFeatures` (weights are loaded by the caller)."""
    if weights is not None:
        raise ValueError(f"{architecture}: load AGSSP weights with agssp_hub.yolo.build_yolo, not weights={weights!r}")
    return TimmFeatures(architecture, json.loads(model_args_json))


def register_backbone(architecture: str, model_args: Mapping[str, Any] | None = None) -> str:
    """Register (once) a torchvision builder for a timm backbone and return its name."""
    from torchvision.models import _api

    args = dict(model_args or {})
    name = _builder_name(architecture, args)
    spec = (architecture, json.dumps(args, sort_keys=True))
    if _SPECS.get(name) == spec and name in _api.BUILTIN_MODELS:
        return name
    if name in _api.BUILTIN_MODELS and _SPECS.get(name) not in (None, spec):
        raise ValueError(f"torchvision model name {name!r} already registered for {_SPECS[name]}")
    if name not in _api.BUILTIN_MODELS:  # torchvision's register_model raises on duplicates
        _api.register_model(name=name)(partial(_build_features, spec[0], spec[1]))
    _SPECS[name] = spec
    return name


def backbone_spec(backbone: str) -> dict[str, Any]:
    """Architecture and detector model_args of a backbone id, or of any timm architecture name."""
    if backbone in BACKBONES:
        spec = BACKBONES[backbone]
        args = _detector_args(spec["architecture"], spec["model_args"])
        return dict(architecture=spec["architecture"], model_args=args, native=spec.get("native"))
    if backbone.startswith("agssp_") and backbone[6:] in BACKBONES:  # registry names work too
        return backbone_spec(backbone[6:])
    if not timm.is_model(backbone):
        raise ValueError(f"unknown backbone {backbone!r}: use one of {sorted(BACKBONES)} or a timm architecture name")
    return dict(architecture=backbone, model_args=_detector_args(backbone, {}), native=None)


@lru_cache(maxsize=32)
def _feature_channels(architecture: str, model_args_json: str) -> tuple[int, ...]:
    """Channels at stride 8/16/32, read from a model built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = timm.create_model(architecture, pretrained=False, num_classes=0, **json.loads(model_args_json))
    info = model.feature_info.info if hasattr(model.feature_info, "info") else model.feature_info
    return tuple(int(info[i]["num_chs"]) for i in feature_indices(model, _STRIDES))


def _native_yaml(name: str, nc: int) -> dict[str, Any]:
    """A stock ultralytics model yaml (e.g. ``yolov8s.yaml``) as a dict with ``nc`` set."""
    from ultralytics.nn.tasks import yaml_model_load

    cfg = copy.deepcopy(yaml_model_load(name))
    cfg["nc"] = nc
    return cfg


def yolo_yaml(backbone: str, nc: int) -> dict[str, Any]:
    """ultralytics model yaml (as a dict): ``backbone`` + YOLOv8 PAFPN/head at width 1.0 on its P3/P4/P5 channels."""
    if nc < 1:
        raise ValueError(f"nc must be >= 1, got {nc}")
    spec = backbone_spec(backbone)
    if spec["native"]:
        return _native_yaml(spec["native"], nc)
    name = register_backbone(spec["architecture"], spec["model_args"])
    c3, c4, c5 = _feature_channels(spec["architecture"], json.dumps(spec["model_args"], sort_keys=True))
    return {
        "nc": nc,
        "depth_multiple": 1.0,  # mmyolo deepen 0.33 of 3 blocks = one bottleneck per C2f, written out below
        "width_multiple": 1.0,
        "agssp_backbone": dict(id=backbone, architecture=spec["architecture"], model_args=spec["model_args"]),
        "backbone": [
            [-1, 1, "TorchVision", [c5, name, None, False, 0, False]],  # 0: [P3, P4, P5]
            [0, 1, "Index", [c3, 0]],  # 1: P3/8
            [0, 1, "Index", [c4, 1]],  # 2: P4/16
            [0, 1, "Index", [c5, 2]],  # 3: P5/32
        ],
        "head": [
            [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
            [[-1, 2], 1, "Concat", [1]],  # [upsampled P5, P4]
            [-1, 1, "C2f", [c4]],  # 6: top_down_layers.0
            [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
            [[-1, 1], 1, "Concat", [1]],  # [upsampled, P3]
            [-1, 1, "C2f", [c3]],  # 9: top_down_layers.1 (P3 out)
            [-1, 1, "Conv", [c3, 3, 2]],  # downsample_layers.0
            [[-1, 6], 1, "Concat", [1]],
            [-1, 1, "C2f", [c4]],  # 12: bottom_up_layers.0 (P4 out)
            [-1, 1, "Conv", [c4, 3, 2]],  # downsample_layers.1
            [[-1, 3], 1, "Concat", [1]],
            [-1, 1, "C2f", [c5]],  # 15: bottom_up_layers.1 (P5 out)
            [[9, 12, 15], 1, "Detect", ["nc"]],
        ],
    }


def _detection_model(obj: Any) -> nn.Module:
    """The ultralytics ``DetectionModel`` inside a ``YOLO``, a DDP wrapper or the model itself."""
    for _ in range(4):
        obj = getattr(obj, "module", obj)
        if isinstance(getattr(obj, "model", None), nn.Sequential):
            return obj
        obj = getattr(obj, "model", None)
    raise TypeError("expected an ultralytics YOLO or DetectionModel")


def _is_native(model: nn.Module) -> bool:
    """True for a stock ultralytics yaml (the backbone is ``model.0``-``model.9``)."""
    return "agssp_backbone" not in getattr(model, "yaml", {})


def backbone_layers(model: Any) -> int:
    """Number of leading ``model.N`` layers that make up the backbone (the ``freeze=`` value for AGDP)."""
    model = _detection_model(model)
    return len(model.yaml["backbone"])


def backbone_state_dict(model: Any) -> dict[str, Tensor]:
    """The backbone weights of a YOLO model as a timm state dict (CSPDarknet keys for the native yolov8s)."""
    model = _detection_model(model)
    if _is_native(model):
        from .models.cspdarknet import ultralytics_to_cspdarknet

        return ultralytics_to_cspdarknet(model.state_dict())
    return {k: v for k, v in model.model[0].m.body.state_dict().items()}


def load_backbone_state_dict(model: Any, state_dict: Mapping[str, Tensor]) -> None:
    """Load timm backbone weights into a YOLO model; every backbone tensor must be present with its shape."""
    model = _detection_model(model)
    if _is_native(model):
        from .models.cspdarknet import cspdarknet_to_ultralytics

        target = model
        sd = cspdarknet_to_ultralytics(dict(state_dict))
        expected = {k for k in target.state_dict() if re.match(r"^model\.[0-9]\.", k)}
    else:
        target = model.model[0].m.body
        sd = dict(state_dict)
        expected = set(target.state_dict())
    missing = sorted(expected - set(sd))
    if missing:
        raise ValueError(f"backbone state dict lacks {len(missing)} tensors, e.g. {missing[:3]}")
    own = target.state_dict()
    bad = [k for k in expected if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"backbone tensor {k}: shape {tuple(sd[k].shape)} does not fit {tuple(own[k].shape)}")
    target.load_state_dict({k: sd[k] for k in expected}, strict=False)


def build_yolo(
    backbone: str,
    nc: int,
    backbone_state_dict: Mapping[str, Tensor] | None = None,
    names: Sequence[str] | None = None,
) -> Any:
    """An ``ultralytics.YOLO`` detector on ``backbone``; the given backbone weights survive ``.train()``."""
    from ultralytics import YOLO

    cfg = yolo_yaml(backbone, nc)
    stem = f"agssp_yolov8s_{backbone}" if not cfg.get("scale") else "agssp_yolov8s"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{stem}.yaml"
        from ultralytics.utils import YAML

        YAML.save(path, {k: v for k, v in cfg.items() if k not in ("yaml_file",)})
        yolo = YOLO(str(path), task="detect", verbose=False)
    yolo.model.yaml = cfg
    yolo.model.yaml["yaml_file"] = f"{stem}.yaml"
    yolo.overrides["model"] = yolo.cfg = f"{stem}.yaml"
    yolo.model.names = {i: n for i, n in enumerate(names)} if names else {i: str(i) for i in range(nc)}
    if backbone_state_dict is not None:
        load_backbone_state_dict(yolo.model, backbone_state_dict)
    # Model.train() rebuilds from the yaml and transfers weights only when a checkpoint is set (ultralytics#8811).
    yolo.ckpt = {"model": yolo.model}
    return yolo


def save_yolo(yolo: Any, path: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write an ultralytics checkpoint (float32, atomic) that loads with plain ``YOLO(path)`` and trains from it."""
    from ultralytics import __version__
    from ultralytics.cfg import DEFAULT_CFG_DICT

    model = copy.deepcopy(_detection_model(yolo)).float().cpu()
    for p in model.parameters():
        p.requires_grad_(True)
    args = dict(getattr(model, "args", None) or {})
    args = {k: v for k, v in args.items() if k in DEFAULT_CFG_DICT}
    args["task"] = "detect"
    args.pop("model", None)
    model.args = args
    ckpt = {
        "date": datetime.now(timezone.utc).isoformat(),
        "version": __version__,
        "license": "Apache-2.0 (weights); ultralytics is AGPL-3.0",
        "model": model,
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": args,
        "agssp": dict(metadata or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_yolo(path: str | Path) -> Any:
    """``YOLO(path)`` with a clear error for a missing file."""
    from ultralytics import YOLO

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: detector checkpoint not found")
    return YOLO(str(path), task="detect")


def set_frozen_backbone_eval(model: Any, layers: int | None = None) -> None:
    """Put the first ``layers`` modules of a YOLO model (default: its backbone) in eval mode (BN stats, drop-path)."""
    model = _detection_model(model)
    n = backbone_layers(model) if layers is None else layers
    for m in list(model.model)[:n]:
        m.eval()


def frozen_backbone_callback(layers: int | None = None) -> Callable[[Any], None]:
    """An ultralytics ``on_train_batch_start`` callback keeping the frozen backbone in eval mode."""

    def _callback(trainer: Any) -> None:
        set_frozen_backbone_eval(trainer.model, layers)

    return _callback


for _key, _spec in BACKBONES.items():  # builders for the known backbones exist as soon as this module is imported
    if not _spec.get("native"):
        register_backbone(_spec["architecture"], _detector_args(_spec["architecture"], _spec["model_args"]))
