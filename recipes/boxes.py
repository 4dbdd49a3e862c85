"""Anomaly maps → pseudo-defect boxes (method-spec §2): YOLO txt per image, one COCO json and a manifest.

Faithful to KeAD's ``generate_yolo_box_from_anomaly.py``: threshold = mean over the folder of each raw map's
maximum − 0.1; each map is resized to its image (cv2 INTER_LINEAR) and binarised (> threshold, no morphology);
outer contours with area ≥ max((H//100)·(W//100), 10) px become bounding rectangles scored by the map maximum
inside; the top 10 by score pass a greedy NMS at IoU 0.8; the single class is 0 ("anomaly").
"""
from __future__ import annotations

if __package__ in (None, ""):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "recipes"

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import atomic_write_bytes, atomic_write_json, check_unique_stems, list_images

__all__ = ["adaptive_threshold", "boxes_from_map", "nms", "maps_to_boxes", "box_iou", "match_boxes", "main"]

CLASS_NAME = "anomaly"


def adaptive_threshold(maps: Sequence[np.ndarray], offset: float = 0.1) -> float:
    """Mean of the per-map maxima (raw low-res maps) minus ``offset``."""
    if not maps:
        raise ValueError("no maps to derive the threshold from")
    return float(np.mean([float(np.max(m)) for m in maps])) - offset


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of [x1, y1, x2, y2] boxes (N×4, M×4 → N×M)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.8) -> list[int]:
    """Greedy NMS in score order; a box is suppressed when its IoU with a kept box is ≥ ``iou_threshold``."""
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    keep: list[int] = []
    for i in order:
        if all(box_iou(boxes[i], boxes[k])[0, 0] < iou_threshold for k in keep):
            keep.append(int(i))
    return keep


def boxes_from_map(amap: np.ndarray, image_hw: tuple[int, int], threshold: float, top_k: int = 10,
                   iou_threshold: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ([x1, y1, x2, y2] pixels, x2/y2 exclusive) and scores of one map for an image of size (H, W)."""
    import cv2

    h, w = image_hw
    resized = cv2.resize(np.asarray(amap, dtype=np.float32), (w, h))
    binary = (resized > threshold).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    min_area = max((h // 100) * (w // 100), 10)
    boxes, scores = [], []
    for c in contours:
        if cv2.contourArea(c) < min_area:
            continue
        x, y, bw, bh = cv2.boundingRect(c)
        boxes.append([x, y, x + bw, y + bh])
        scores.append(float(resized[y:y + bh, x:x + bw].max()))
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0)
    b, s = np.asarray(boxes, np.float64), np.asarray(scores)
    top = np.argsort(-s, kind="stable")[:top_k]
    b, s = b[top], s[top]
    keep = nms(b, s, iou_threshold)
    return b[keep], s[keep]


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def maps_to_boxes(maps_dir: Path, images: Sequence[Path] | Path, out_dir: Path, offset: float = 0.1,
                  top_k: int = 10, iou_threshold: float = 0.8, threshold: float | None = None) -> dict[str, Any]:
    """Write ``<out>/labels/<stem>.txt`` (YOLO), ``<out>/annotations.json`` (COCO) and ``<out>/manifest.json``.

    Every image needs ``<maps_dir>/<stem>.npy``. ``threshold`` overrides the adaptive one. Returns the manifest.
    """
    maps_dir, out_dir = Path(maps_dir), Path(out_dir)
    images = list_images(images) if isinstance(images, (str, Path)) else [Path(p) for p in images]
    check_unique_stems(images)
    maps: dict[str, np.ndarray] = {}
    for p in images:
        f = maps_dir / f"{p.stem}.npy"
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no anomaly map for image {p}")
        m = np.load(f, allow_pickle=False)
        if m.ndim != 2:
            raise ValueError(f"{f}: expected a 2-D map, got shape {m.shape}")
        maps[p.stem] = m
    max_mean = float(np.mean([m.max() for m in maps.values()]))
    thr = adaptive_threshold(list(maps.values()), offset) if threshold is None else float(threshold)
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 0, "name": CLASS_NAME}]}
    n_boxes = 0
    for img_id, p in enumerate(images):
        h, w = _image_size(p)
        b, s = boxes_from_map(maps[p.stem], (h, w), thr, top_k, iou_threshold)
        lines = []
        for (x1, y1, x2, y2), sc in zip(b, s):
            lines.append(f"0 {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
            coco["annotations"].append({"id": n_boxes, "image_id": img_id, "category_id": 0, "score": float(sc),
                                        "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                        "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0})
            n_boxes += 1
        coco["images"].append({"id": img_id, "file_name": p.name, "height": h, "width": w})
        atomic_write_bytes(out_dir / "labels" / f"{p.stem}.txt", ("\n".join(lines) + ("\n" if lines else "")).encode())
    atomic_write_json(out_dir / "annotations.json", coco)
    manifest = {"maps": str(maps_dir), "num_images": len(images), "num_boxes": n_boxes, "max_mean": max_mean,
                "offset": offset, "threshold": thr, "top_k": top_k, "nms_iou": iou_threshold,
                "classes": [CLASS_NAME], "min_area_rule": "max((H//100)*(W//100), 10)"}
    atomic_write_json(out_dir / "manifest.json", manifest)
    return manifest


def match_boxes(pred: Sequence[np.ndarray], gt: Sequence[np.ndarray], iou: float = 0.5) -> dict[str, float]:
    """Box recall (GT boxes hit by a prediction at IoU ≥ ``iou``) and precision (predictions that hit a GT box)."""
    tp_gt = n_gt = tp_pred = n_pred = 0
    for p, g in zip(pred, gt):
        p, g = np.asarray(p).reshape(-1, 4), np.asarray(g).reshape(-1, 4)
        n_gt += len(g)
        n_pred += len(p)
        if len(p) and len(g):
            m = box_iou(p, g) >= iou
            tp_gt += int(m.any(0).sum())
            tp_pred += int(m.any(1).sum())
    return {"recall": tp_gt / n_gt if n_gt else float("nan"), "precision": tp_pred / n_pred if n_pred else float("nan"),
            "num_gt": n_gt, "num_pred": n_pred}


def main(argv: Sequence[str] | None = None) -> int:
    """``python recipes/boxes.py --maps DIR --images DIR --out DIR``."""
    p = argparse.ArgumentParser(prog="agssp-hub boxes", description=__doc__)
    p.add_argument("--maps", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--offset", type=float, default=0.1)
    p.add_argument("--threshold", type=float, help="absolute threshold instead of mean max − offset")
    a = p.parse_args(argv)
    print(json.dumps(maps_to_boxes(a.maps, a.images, a.out, a.offset, threshold=a.threshold), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
