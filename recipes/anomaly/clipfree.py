"""CLIP-free anomaly maps from ImageNet CNN features (default generator when no CLIP weights are present).

Features: timm ``features_only`` maps of ImageNet ``tf_efficientnet_lite0`` stages. ``out_indices`` None picks by
mode: few-shot uses strides 8, 16, 32 (indices 2, 3, 4: the coarse stages catch large low-frequency defects such as
MT_Uneven; MT 4-shot every-5th subset pixel / image AUROC 0.632 / 0.585 with strides 4, 8 → 0.717 / 0.774), zero-shot uses
strides 4, 8 (indices 1, 2: better for NEU's fine textures, and twice as fast),
3×3 local average pooling (PatchCore-style neighbourhood aggregation), resized to the stride-8 grid and
L2-normalised per stage. Images keep their aspect: the short side goes to ``short_side`` px and the long side to the
nearest multiple of 32 (capped at ``max_aspect``), so the map grid is ``short_side/8`` on the short side.
Patch score:
- few-shot (normal images given): distance to the nearest patch of the normals' memory bank;
- zero-shot ``self`` (default): distance to the image's own median feature (defects are rare within an image);
- zero-shot ``mutual``: MuSc-style mutual scoring, the mean of the smallest ``mutual_frac`` of the nearest-patch
  distances to each image of a reference bank sampled from the folder (fixed seed, so memory stays flat);
- ``self+mutual`` sums both.
Maps are Gaussian-smoothed (σ = 1 cell) and calibrated per folder for the fixed pseudo-box rule (threshold = mean
of the per-map maxima − 0.1, method-spec §2). From the reference bank: lo = median pixel score, hi = mean per-map
maximum and the box level t = lo + ``box_level``·(hi − lo). A monotone piecewise-linear map sends lo → 0, t → 0.9 and
hi → 1.0 (clipped to 0..2), so a typical map maximum is ≈1
and the box threshold ≈0.9 falls at raw level t. The default ``box_level`` 0.9 is the plain affine
(s − lo)/(hi − lo); lower levels give larger, more numerous boxes (more recall, less precision). Measured on all of
NEU-DET val (zero-shot) and all MT defect images (4-shot) at IoU 0.5 (recall/precision): level 0.9 .081/.186 and
.095/.157, 0.8 .101/.149 and .106/.134, 0.5 .127/.089 and .084/.048; no level wins on F1 (≈0.12 at 0.8-0.9), so
0.9 stays the default. Monotone: every AUROC / AUPRO is unchanged by it.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ClipFreeConfig", "ClipFree", "calibrate_map"]


def calibrate_map(raw: np.ndarray, lo: float, t: float, hi: float) -> np.ndarray:
    """Monotone piecewise-linear calibration to float32 0..2: lo → 0, box level t → 0.9, hi → 1.0."""
    if not lo < t < hi:
        raise ValueError(f"calibration needs lo < t < hi, got lo={lo}, t={t}, hi={hi}")
    raw = np.asarray(raw, dtype=np.float64)
    out = np.where(raw <= t, 0.9 * (raw - lo) / (t - lo), 0.9 + 0.1 * (raw - t) / (hi - t))
    return np.clip(out, 0.0, 2.0).astype(np.float32)


@dataclass
class ClipFreeConfig:
    """Settings of the CLIP-free generator."""

    backbone: str = "tf_efficientnet_lite0"  # ImageNet weights from recipes.imagenet; other names: timm pretrained
    out_indices: tuple[int, ...] | None = None  # None: (2, 3, 4) with few-shot normals, (1, 2) zero-shot
    short_side: int = 224
    max_aspect: float = 2.0
    max_side: int | None = None  # cap of the network input's long side (speed on large images), None: no cap
    pool: int = 3
    grid_stride: int = 8
    smooth_sigma: float = 1.0
    zero_shot: str = "self"  # self | mutual | self+mutual
    mutual_frac: float = 0.3
    bank_size: int = 32
    seed: int = 0
    box_level: float = 0.9  # raw level, as a fraction of the typical peak height, that lands on the box threshold

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly settings."""
        return asdict(self)


class ClipFree:
    """Anomaly maps from CNN patch features; see the module docstring for the scoring."""

    def __init__(self, cfg: ClipFreeConfig | None = None, device: str | torch.device = "cpu",
                 few_shot: bool = False) -> None:
        """Build the feature extractor (ImageNet weights, eval mode); ``few_shot`` picks the default layers."""
        self.cfg = cfg or ClipFreeConfig()
        if self.cfg.out_indices is None:
            self.cfg.out_indices = (2, 3, 4) if few_shot else (1, 2)
        self.cfg.out_indices = tuple(self.cfg.out_indices)
        if self.cfg.zero_shot not in ("self", "mutual", "self+mutual"):
            raise ValueError(f"zero_shot must be self, mutual or self+mutual, got {self.cfg.zero_shot!r}")
        self.device = torch.device(device)
        if self.cfg.backbone == "tf_efficientnet_lite0":
            from ..imagenet import create_imagenet_lite0

            model = create_imagenet_lite0(features_only=True, out_indices=self.cfg.out_indices)
        else:
            import timm

            model = timm.create_model(self.cfg.backbone, pretrained=True, features_only=True,
                                      out_indices=self.cfg.out_indices)
        self.model = model.to(self.device).eval()
        # channels_last helps convolutions on GPUs; on CPU it measured no faster (NEU-Seg, 2 shared cores)
        self.memory_format = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        dc = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = torch.tensor(dc.get("mean", (0.5, 0.5, 0.5)), device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(dc.get("std", (0.5, 0.5, 0.5)), device=self.device).view(1, 3, 1, 1)
        self.memory: Tensor | None = None
        self.bank: list[Tensor] = []
        self.calibration: tuple[float, float, float] | None = None

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """Network input (H, W): short side ``short_side`` (long side ≤ ``max_side``), native aspect, multiples of 32."""
        c = self.cfg
        s = c.short_side / min(h, w)
        cap = c.short_side * c.max_aspect
        if c.max_side is not None:
            s, cap = min(s, c.max_side / max(h, w)), min(cap, c.max_side)
        th, tw = (max(32, int(round(min(v * s, cap) / 32)) * 32) for v in (h, w))
        return th, tw

    @torch.inference_mode()
    def features(self, images: Sequence[np.ndarray]) -> list[Tensor]:
        """Per image a (h·w)×C feature matrix and its grid, batched by input size."""
        out: list[Tensor | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(self.input_size(*im.shape[:2]), []).append(i)
        for (th, tw), idx in groups.items():
            x = torch.cat([
                F.interpolate(torch.from_numpy(np.ascontiguousarray(images[i])).permute(2, 0, 1)[None].float(),
                              (th, tw), mode="bilinear", antialias=True, align_corners=False)
                for i in idx
            ]).to(self.device).div_(255)
            fs = self.model(((x - self.mean) / self.std).contiguous(memory_format=self.memory_format))
            gh, gw = th // self.cfg.grid_stride, tw // self.cfg.grid_stride
            parts = []
            for f in fs:
                if self.cfg.pool > 1:
                    f = F.avg_pool2d(f, self.cfg.pool, 1, self.cfg.pool // 2, count_include_pad=False)
                f = F.interpolate(f, (gh, gw), mode="bilinear", align_corners=False)
                parts.append(F.normalize(f, dim=1))
            feat = torch.cat(parts, 1) / len(parts) ** 0.5
            for j, i in enumerate(idx):
                out[i] = feat[j]
        return out  # type: ignore[return-value]

    def set_memory(self, normals: Sequence[np.ndarray]) -> None:
        """Few-shot memory bank: all patches of the given normal images (none → zero-shot)."""
        feats = self.features(list(normals)) if normals else []
        self.memory = torch.cat([f.flatten(1).T for f in feats]) if feats else None

    @torch.inference_mode()
    def _raw(self, feat: Tensor, self_index: int | None = None) -> np.ndarray:
        """Un-normalised, smoothed score map of one image's features (C×h×w)."""
        from scipy.ndimage import gaussian_filter

        _, gh, gw = feat.shape
        q = feat.flatten(1).T
        if self.memory is not None:
            s = torch.cdist(q, self.memory).min(1).values
        else:
            s = torch.zeros(q.shape[0], device=q.device)
            if "self" in self.cfg.zero_shot:
                s = s + torch.linalg.vector_norm(q - q.median(0).values, dim=1)
            if "mutual" in self.cfg.zero_shot:
                refs = [b for j, b in enumerate(self.bank) if j != self_index]
                if not refs:
                    raise RuntimeError("mutual zero-shot scoring needs a reference bank: call calibrate() first")
                d = torch.stack([torch.cdist(q, r).min(1).values for r in refs], 1).sort(1).values
                if d.shape[1] > 1 and float(d[:, 0].max()) < 1e-5:  # the image is itself in the bank
                    d = d[:, 1:]
                s = s + d[:, : max(1, int(round(d.shape[1] * self.cfg.mutual_frac)))].mean(1)
        m = s.view(gh, gw).cpu().numpy().astype(np.float32)
        return gaussian_filter(m, self.cfg.smooth_sigma) if self.cfg.smooth_sigma > 0 else m

    def calibrate(self, bank_images: Sequence[np.ndarray]) -> tuple[float, float, float]:
        """Set the reference bank and the folder calibration (lo, t, hi) from sampled images of the folder."""
        if not 0.0 < self.cfg.box_level < 1.0:
            raise ValueError(f"box_level must be in (0, 1), got {self.cfg.box_level}")
        feats = self.features(list(bank_images))
        self.bank = [f.flatten(1).T for f in feats]
        raws = [self._raw(f, self_index=i) for i, f in enumerate(feats)]
        lo = float(np.median(np.concatenate([r.ravel() for r in raws])))
        hi = float(np.mean([r.max() for r in raws]))
        if not hi > lo:
            hi = lo + 1e-6  # constant scores (e.g. blank images): any positive span works
        self.calibration = (lo, lo + self.cfg.box_level * (hi - lo), hi)
        return self.calibration

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated float32 map (0..2) of a raw score map; see ``calibrate_map``."""
        if self.calibration is None:
            raise RuntimeError("ClipFree.calibrate(bank_images) must run before maps are computed")
        return calibrate_map(raw, *self.calibration)

    @staticmethod
    def sample_bank(paths: Sequence[Path], size: int, seed: int) -> list[Path]:
        """The reference-bank images: ``size`` paths drawn with a fixed seed from the whole (unsharded) list."""
        paths = list(paths)
        return sorted(random.Random(seed).sample(paths, min(size, len(paths))))

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Normalised float32 maps (0..2) for a batch of RGB uint8 images; ``calibrate`` must have run."""
        if self.calibration is None:
            raise RuntimeError("ClipFree.calibrate(bank_images) must run before maps are computed")
        return [self.normalise(self._raw(f)) for f in self.features(images)]
