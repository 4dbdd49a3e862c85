"""Anomaly-map quality: pixel AUROC, image AUROC, AUPRO (FPR ≤ 0.3) and image | map | mask overlay PNGs."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["auroc", "aupro", "upsample_map", "evaluate_maps", "save_overlay"]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged); NaN when a class is absent."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def aupro(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = 0.3, steps: int = 512) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised to 0..1 (MVTec AD definition).

    Every connected defect region (8-connectivity) of every mask weighs equally; the false-positive rate is taken
    over all defect-free pixels of all images.
    """
    from scipy import ndimage

    neg, regions = [], []
    for m, g in zip(maps, masks):
        g = np.asarray(g, dtype=bool)
        neg.append(np.asarray(m)[~g].ravel())
        lab, n = ndimage.label(g, structure=np.ones((3, 3), dtype=int))
        for r in range(1, n + 1):
            regions.append(np.sort(np.asarray(m)[lab == r].ravel()))
    if not regions:
        return float("nan")
    negs = np.sort(np.concatenate(neg))
    if negs.size == 0:
        return float("nan")
    # thresholds from the high end of the normal-pixel distribution: FPR from 0 to just past the limit
    q = np.linspace(0.0, min(1.0, fpr_limit * 1.02), steps)
    thr = np.quantile(negs, 1.0 - q)
    fpr = 1.0 - np.searchsorted(negs, thr, side="right") / negs.size
    pro = np.mean([1.0 - np.searchsorted(r, thr, side="right") / r.size for r in regions], axis=0)
    order = np.argsort(fpr)
    fpr, pro = fpr[order], pro[order]
    keep = fpr <= fpr_limit
    f = np.append(fpr[keep], fpr_limit)
    p = np.append(pro[keep], np.interp(fpr_limit, fpr, pro))
    return float(np.trapezoid(p, f) / fpr_limit)


def upsample_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to (H, W) with cv2 (pixel-centre aligned, as ``align_corners=False``)."""
    import cv2

    return cv2.resize(np.asarray(amap, dtype=np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def evaluate_maps(
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    max_pixels: int = 256,
) -> dict[str, float | int]:
    """Pixel AUROC, image AUROC and AUPRO of low-res ``maps`` against full-size boolean ``masks``.

    ``None`` masks mean a defect-free image (all-normal pixels). Maps are upsampled to the mask size; masks larger
    than ``max_pixels`` on the long side are evaluated at that size (nearest-neighbour mask resize) to bound
    memory, which changes the AUROC by a negligible amount. Image score = map maximum; image label = mask has a
    defect pixel.
    """
    import cv2

    ups, gts, img_scores, img_labels = [], [], [], []
    for m, g in zip(maps, masks):
        m = np.asarray(m, dtype=np.float32)
        if g is None:
            g = np.zeros(m.shape, dtype=bool)
        h, w = g.shape
        scale = min(1.0, max_pixels / max(h, w))
        hh, ww = max(1, round(h * scale)), max(1, round(w * scale))
        if (hh, ww) != (h, w):
            g = cv2.resize(g.astype(np.uint8), (ww, hh), interpolation=cv2.INTER_NEAREST).astype(bool)
        u = upsample_map(m, (hh, ww))
        ups.append(u)
        gts.append(g)
        img_scores.append(float(m.max()))
        img_labels.append(bool(g.any()))
    pix_s = np.concatenate([u.ravel() for u in ups])
    pix_y = np.concatenate([g.ravel() for g in gts])
    defective = [i for i, y in enumerate(img_labels) if y]
    return {
        "pixel_auroc": auroc(pix_s, pix_y),
        "image_auroc": auroc(np.array(img_scores), np.array(img_labels)),
        "aupro": aupro(ups, gts),
        "pixel_auroc_defective_only": auroc(
            np.concatenate([ups[i].ravel() for i in defective]) if defective else np.zeros(0),
            np.concatenate([gts[i].ravel() for i in defective]) if defective else np.zeros(0),
        ),
        "num_images": len(ups),
        "num_defective": len(defective),
    }


def save_overlay(path: Path, image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, title: str = "") -> None:
    """Write a PNG with three panels: image | map (upsampled, over the image) | mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape[:2]
    up = upsample_map(amap, (h, w))
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3 * h / max(w, 1) + 0.4), dpi=100)
    axes[0].imshow(image)
    axes[0].set_title(title or "image", fontsize=8)
    axes[1].imshow(image)
    im = axes[1].imshow(up, cmap="jet", alpha=0.5)
    axes[1].set_title(f"map (max {float(amap.max()):.2f})", fontsize=8)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02)
    axes[2].imshow(np.zeros((h, w)) if mask is None else mask, cmap="gray", vmin=0, vmax=1)
    axes[2].set_title("mask", fontsize=8)
    for a in axes:
        a.axis("off")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
